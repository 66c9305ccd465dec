"""The patient page: the messages planned for the coming days beside the history, the visit box
of a prescription, labelled choices instead of typed codes, and what a queued message waits for."""

import datetime as dt
import re

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import translation

from campaigns.models import Rule, Skip, SkipReason
from campaigns.preview import message_waiting_for, occurrence_label, patient_plan
from consent.models import Channel, Purpose
from patients.models import ClinicProfile, Prescription
from reminders.models import OutboxMessage, Status
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    ProcedureFactory,
    VisitFactory,
    grant,
)
from tests.helpers import only, taipei

pytestmark = pytest.mark.django_db

NOW = taipei(2026, 12, 1, 8, 30)  # a Tuesday morning


def page(client, user, patient):
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        return client.get(reverse("admin:patients_patient_change", args=[patient.pk]))


def planned(client, user, patient):
    """The planned-messages panel, as the patient page loads it once it is shown."""
    client.force_login(user)
    with time_machine.travel(NOW, tick=False):
        return client.get(reverse("admin:campaigns_rule_patient_plan", args=[patient.pk]))


def plan_panel(response) -> str:
    html = response.content.decode()
    start = html.index('id="planned-messages"')
    return re.sub(r"\s+", " ", html[start : html.index("</fieldset>", start)])


# --- the planned messages --------------------------------------------------------------------


def test_a_birthday_next_week_with_consent_shows_its_day_time_and_channel(
    client, front_desk_user, clinic
):
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1960, 12, 8))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    panel = plan_panel(planned(client, front_desk_user, patient))

    assert "未來 30 天預定的訊息" in panel
    assert "12月8日（二） 10:00" in panel  # the day, at the rule's time, in Taipei
    assert "生日祝福" in panel and "簡訊" in panel
    assert "plan-skip" not in panel


def test_a_birthday_without_consent_shows_the_reason_in_words(client, front_desk_user, clinic):
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1960, 12, 8))
    grant(patient, Purpose.CARE, Channel.SMS)  # care, not birthday greetings

    panel = plan_panel(planned(client, front_desk_user, patient))

    with translation.override("zh-hant"):
        reason = str(SkipReason.NO_CONSENT.label)
    assert "12月8日（二）" in panel
    assert f"不發送： {reason}" in panel
    assert "no_consent" not in panel


def test_the_patient_page_loads_the_plan_which_is_audited_and_permission_checked(
    client, front_desk_user, clinic
):
    from django.contrib.auth.models import User

    from patients.models import AuditEntry

    patient = PatientFactory()
    url = reverse("admin:campaigns_rule_patient_plan", args=[patient.pk])

    assert f'data-url="{url}"' in page(client, front_desk_user, patient).content.decode()
    assert planned(client, front_desk_user, patient).status_code == 200
    assert AuditEntry.objects.filter(
        actor=front_desk_user, action="view", patients=patient, path=url
    ).exists()

    nobody = User.objects.create_user("nobody", password="x", is_staff=True)
    assert planned(client, nobody, patient).status_code == 403


def test_the_plan_is_a_dry_run_that_writes_nothing_and_skips_what_is_already_queued(clinic):
    only("回診")  # notice a week before, confirmation the day before
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 10, 14, 30))
    counts = OutboxMessage.objects.count(), Skip.objects.count()

    rows = patient_plan(patient=patient, now=NOW)

    assert (OutboxMessage.objects.count(), Skip.objects.count()) == counts
    assert [(row.rule_name, row.send_at, row.channel) for row in rows] == [
        ("回診通知", taipei(2026, 12, 3, 10, 0), "sms"),
        ("回診確認", taipei(2026, 12, 9, 10, 0), "sms"),
    ]
    with translation.override("zh-hant"):
        assert rows[0].about == "回診 12月10日（四） 14:30"


def test_the_plan_reads_a_few_queries_per_rule_whatever_the_number_of_days(clinic):
    patient = PatientFactory(birth_date=dt.date(1960, 12, 8))
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 10, 14, 30))
    PrescriptionFactory(patient=patient, refills=2)
    ProcedureFactory(patient=patient, discharged_at=taipei(2026, 11, 30, 16, 0))
    rules = Rule.objects.filter(enabled=True).count()

    with CaptureQueriesContext(connection) as queries:
        rows = patient_plan(patient=patient, now=NOW)

    assert rows
    # Two reads per rule (its 30 days in one UNION, the patient's facts), and the planner's
    # rendering where something would be queued; never one per day.
    assert len(queries) <= 4 * rules + 3


def test_a_message_already_in_the_outbox_is_history_not_plan(clinic):
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1960, 12, 8))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key="birthday:2026-12-08",
        purpose=Purpose.RELATIONSHIP,
        channel=Channel.SMS,
        due_at=taipei(2026, 12, 8, 10),
        next_attempt_at=taipei(2026, 12, 8, 10),
        expires_at=taipei(2026, 12, 9),
        body="生日快樂",
    )

    assert patient_plan(patient=patient, now=NOW) == []


# --- the prescription's visit ----------------------------------------------------------------


def test_the_prescription_visit_box_lists_only_this_patients_visits(
    client, front_desk_user, clinic
):
    patient, other = PatientFactory(), PatientFactory()
    own = VisitFactory(patient=patient, visited_on=dt.date(2026, 11, 20))
    VisitFactory(patient=other, visited_on=dt.date(2026, 11, 21))
    prescription = PrescriptionFactory(patient=patient, visit=own)

    response = page(client, front_desk_user, patient)
    formsets = response.context["inline_admin_formsets"]
    prescriptions = next(f for f in formsets if f.formset.model is Prescription).formset
    assert list(prescriptions.forms[0].fields["visit"].queryset) == [own]
    assert list(prescriptions.empty_form.fields["visit"].queryset) == [own]

    client.force_login(front_desk_user)
    url = reverse("admin:patients_prescription_change", args=[prescription.pk])
    form = client.get(url).context["adminform"].form
    assert list(form.fields["visit"].queryset) == [own]


def test_a_prescription_cannot_be_tied_to_another_patients_visit(client, front_desk_user, clinic):
    patient, other = PatientFactory(), PatientFactory()
    prescription = PrescriptionFactory(patient=patient)
    foreign = VisitFactory(patient=other)
    client.force_login(front_desk_user)
    url = reverse("admin:patients_prescription_change", args=[prescription.pk])

    response = client.post(
        url,
        {
            "patient": patient.pk,
            "visit": foreign.pk,
            "drug": "Amlodipine 5mg",
            "dose": "1 tab",
            "frequency": "QD",
            "dose_times": "09:00",
            "start_date": "2026-12-01",
            "days_supplied": 28,
            "refills": 0,
            "refill_reminders": "on",
            "refill_windows-TOTAL_FORMS": 0,
            "refill_windows-INITIAL_FORMS": 0,
        },
    )

    assert response.status_code == 200 and "visit" in response.context["adminform"].form.errors
    prescription.refresh_from_db()
    assert prescription.visit is None


# --- labelled choices, not typed codes --------------------------------------------------------


def test_a_rules_channels_are_chosen_in_order_from_labelled_lists(client, manager_user):
    rule = Rule.objects.get(name="生日祝福")
    client.force_login(manager_user)
    url = reverse("admin:campaigns_rule_change", args=[rule.pk])

    html = client.get(url).content.decode()

    assert '<select name="channel_order_0"' in html and '<select name="channel_order_2"' in html
    assert '<option value="sms">簡訊</option>' in html
    assert '<option value="line" selected>LINE</option>' in html  # the first, as shipped
    assert 'name="sexes" value="F"' in html and "未填寫</label>" in html
    assert 'type="text" name="channel_order"' not in html


def test_a_rules_channel_order_is_saved_from_the_lists_and_a_channel_twice_is_refused():
    from campaigns.admin import RuleForm

    rule = Rule.objects.get(name="生日祝福")
    data = {
        "name": rule.name,
        "kind": rule.kind,
        "purpose": rule.purpose,
        "enabled": "on",
        "priority": rule.priority,
        "offsets": "0",
        "send_time": "10:00",
        "channel_order_0": "sms",
        "channel_order_1": "",
        "channel_order_2": "email",
        "departments": [],
    }
    AppointmentFactory(department="眼科")

    form = RuleForm(data, instance=rule)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["channel_order"] == ["sms", "email"]
    assert ("眼科", "眼科") in form.fields["departments"].choices

    twice = RuleForm({**data, "channel_order_1": "sms"}, instance=rule)
    assert not twice.is_valid() and "channel_order" in twice.errors


def test_a_procedures_care_plan_is_chosen_from_the_plans_the_rules_use(client, front_desk_user):
    Rule.objects.filter(name="術後關懷").update(care_plan_key="cataract")
    patient = PatientFactory()
    ProcedureFactory(patient=patient, care_plan_key="old-plan")

    response = page(client, front_desk_user, patient)
    html = response.content.decode()

    assert re.search(r'<select name="procedures-0-care_plan_key"', html)
    assert '<option value="cataract">cataract（術後關懷）</option>' in html
    assert '<option value="old-plan" selected>old-plan</option>' in html  # kept, not lost


# --- words for what a queued message waits for, and for occurrences ---------------------------


def _queued(rule, patient, **fields) -> OutboxMessage:
    defaults = {
        "occurrence_key": "birthday:2026-12-01",
        "purpose": Purpose.RELATIONSHIP,
        "channel": Channel.SMS,
        "due_at": NOW,
        "next_attempt_at": NOW,
        "expires_at": taipei(2026, 12, 2),
        "body": "生日快樂",
    }
    return OutboxMessage.objects.create(rule=rule, patient=patient, **{**defaults, **fields})


@pytest.mark.parametrize(
    ("fields", "last_sent", "words"),
    [
        ({"next_attempt_at": taipei(2026, 12, 1, 9, 0)}, None, "下一個發送時段 09:00"),
        (
            {"next_attempt_at": taipei(2026, 12, 1, 10, 0)},
            taipei(2026, 12, 1, 9, 30),
            f"與前一則訊息間隔 {settings.MESSAGE_GAP_MINUTES} 分鐘後發送",
        ),
        (
            {"channel": Channel.EMAIL, "error": "簡訊: 已撤回同意"},
            None,
            "簡訊: 已撤回同意，改以電子郵件發送",
        ),
        (
            {"next_attempt_at": taipei(2026, 12, 1, 8, 32), "attempts": 1, "error": "timeout"},
            None,
            "暫時性錯誤，將於 08:32 重試",
        ),
        ({"status": Status.SENT}, None, ""),
    ],
)
def test_a_queued_message_says_what_it_waits_for(fields, last_sent, words, clinic, settings):
    settings.MESSAGE_GAP_MINUTES = 30
    rule, patient = Rule.objects.get(name="生日祝福"), PatientFactory()
    message = _queued(rule, patient, **fields)

    with translation.override("zh-hant"):
        said = message_waiting_for(
            message=message, now=NOW, profile=ClinicProfile.load(), last_sent_at=last_sent
        )

    assert words in said if words else said == ""


def test_the_outbox_list_and_the_patient_page_show_the_wait_in_words(
    client, front_desk_user, clinic
):
    rule, patient = Rule.objects.get(name="生日祝福"), PatientFactory()
    _queued(rule, patient, next_attempt_at=taipei(2026, 12, 1, 9, 0))
    client.force_login(front_desk_user)

    with time_machine.travel(NOW, tick=False):
        listing = client.get(reverse("admin:reminders_outboxmessage_changelist")).content
    patient_page = page(client, front_desk_user, patient).content

    assert "下一個發送時段 09:00" in listing.decode()
    assert "下一個發送時段 09:00" in patient_page.decode()


def test_an_occurrence_is_shown_in_words_in_the_clinics_time_zone():
    with translation.override("zh-hant"):
        # 06:30 UTC is 14:30 in Taipei: staff never see the UTC key.
        assert occurrence_label("appointment:7:2026-12-07T06:30:00+00:00") == (
            "回診 12月7日（一） 14:30"
        )
        assert occurrence_label("procedure:3:day3") == "出院後第 3 天"
        assert occurrence_label("refill:4:closes_on-2") == "慢箋領藥期結束前 2 天"
        assert occurrence_label("dose:5:2026-12-03T08:00:15") == (
            "服藥 12月3日（四） 08:00，提前 15 分鐘"
        )


def test_the_outbox_and_the_patient_page_never_show_a_utc_key_or_a_channel_code(
    client, front_desk_user, clinic
):
    rule, patient = Rule.objects.get(name="回診通知"), PatientFactory()
    key = "appointment:7:2026-12-07T06:30:00+00:00"
    message = _queued(rule, patient, occurrence_key=key, channels_left=["email"])
    Skip.objects.create(rule=rule, patient=patient, occurrence_key=key, reason="no_consent", at=NOW)
    client.force_login(front_desk_user)

    outbox = client.get(reverse("admin:reminders_outboxmessage_change", args=[message.pk]))
    patient_page = page(client, front_desk_user, patient)

    for html in (outbox.content.decode(), patient_page.content.decode()):
        assert "回診 12月7日（一） 14:30" in html
        assert "06:30:00+00:00" not in html
    assert "電子郵件" in outbox.content.decode() and '"email"' not in outbox.content.decode()


def test_the_dry_run_for_today_queues_and_skips_what_the_planner_then_does(clinic):
    from tests.helpers import plan

    patient = PatientFactory(birth_date=dt.date(1960, 12, 1))
    grant(patient, Purpose.CARE, Channel.SMS)  # no consent for the birthday greeting
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 2, 9, 0))
    ProcedureFactory(patient=patient, discharged_at=taipei(2026, 11, 30, 16, 0))
    today = NOW.date()

    dry = [row for row in patient_plan(patient=patient, now=NOW) if row.day == today]
    plan(NOW)

    queued = {
        (m.rule.name, m.occurrence_key, m.channel, m.due_at)
        for m in OutboxMessage.objects.filter(patient=patient)
    }
    skipped = {
        (s.rule.name, s.occurrence_key, s.reason) for s in Skip.objects.filter(patient=patient)
    }
    assert queued and skipped
    assert {(r.rule_name, r.occurrence_key, r.channel, r.send_at) for r in dry if not r.skip} == (
        queued
    )
    assert {(r.rule_name, r.occurrence_key, r.skip) for r in dry if r.skip} == skipped


def test_a_patient_of_many_years_shows_the_newest_visits_and_links_to_all(
    client, front_desk_user, clinic
):
    # given 25 visits, one a day
    patient = PatientFactory()
    for day in range(25):
        VisitFactory(patient=patient, visited_on=dt.date(2026, 1, 1) + dt.timedelta(days=day))

    response = page(client, front_desk_user, patient)

    # then the page draws the newest 20 and says there are more, with a link to them all
    formset = next(
        f for f in response.context["inline_admin_formsets"] if f.formset.model.__name__ == "Visit"
    ).formset
    shown = [form.instance.visited_on for form in formset.initial_forms]
    assert len(shown) == 20 and shown[0] == dt.date(2026, 1, 25)
    body = response.content.decode()
    link = reverse("admin:patients_visit_changelist") + f"?patient__id__exact={patient.pk}"
    assert link in body
    listed = client.get(link)
    assert listed.status_code == 200 and listed.context["cl"].result_count == 25


def test_saving_the_patient_page_with_many_visits_keeps_them_all(client, front_desk_user, clinic):
    patient = PatientFactory()
    for day in range(25):
        VisitFactory(patient=patient, visited_on=dt.date(2026, 1, 1) + dt.timedelta(days=day))
    response = page(client, front_desk_user, patient)
    data = {}
    for admin_form in [response.context["adminform"], *response.context["inline_admin_formsets"]]:
        form_or_formset = getattr(admin_form, "formset", None) or admin_form.form
        forms = getattr(form_or_formset, "forms", [form_or_formset])
        if hasattr(form_or_formset, "management_form"):
            management = form_or_formset.management_form
            data.update({management.add_prefix(k): v for k, v in management.initial.items()})
        for form in forms:
            for name, field in form.fields.items():
                value = form.initial.get(name, field.initial)
                if value is None or value is False:
                    continue
                if isinstance(value, list | tuple):
                    value = [getattr(v, "pk", v) for v in value]
                data[form.add_prefix(name)] = getattr(value, "pk", value)

    with time_machine.travel(NOW, tick=False):
        saved = client.post(reverse("admin:patients_patient_change", args=[patient.pk]), data)

    assert saved.status_code == 302, saved.context and [
        f.errors for f in saved.context.get("inline_admin_formsets", [])
    ]
    assert patient.visits.count() == 25
