"""Group messages (reminders.groups): the counts per channel and per reason against a fixture
counted by hand, the day-and-doctor group and a segment with every filter, the signed
confirmation (nothing before it, a changed group detected, a second submit adding nothing), the
send window against urgent, the size cap, the audit entry, and the messages reaching the fake
providers through the dispatch helpers."""

import datetime as dt

import pytest
import time_machine

from campaigns.models import RuleKind, SkipReason
from campaigns.policy import channel_order_for, pick_channel, policy_annotations
from consent.models import Channel, Purpose
from patients.models import Appointment, AuditEntry, Condition, Patient
from reminders.groups import (
    GroupChanged,
    GroupDefinition,
    GroupRefused,
    group_counts,
    group_patients,
    group_preview,
    group_rule,
    group_send,
)
from reminders.models import GroupSend, OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory, VisitFactory, grant, withdraw
from tests.helpers import dispatch, taipei

pytestmark = pytest.mark.django_db
NOW = taipei(2026, 3, 10, 10, 0)  # a Tuesday morning, inside the send window (9:00-21:00)
TOMORROW = dt.date(2026, 3, 11)
DOCTOR = "王醫師"
TEXT = "王醫師明天門診延後 30 分鐘開始，請晚 30 分鐘到診。"


@pytest.fixture(autouse=True)
def frozen(clinic):
    with time_machine.travel(NOW, tick=False):
        yield


def line_id(n: int) -> str:
    return "U" + f"{n:x}".rjust(32, "0")


def booked(patient, *, day=TOMORROW, doctor=DOCTOR, department="家醫科", status=None):
    return AppointmentFactory(
        patient=patient,
        starts_at=taipei(day.year, day.month, day.day, 9, 30),
        doctor=doctor,
        department=department,
        status=status or Appointment.Status.BOOKED,
    )


@pytest.fixture
def tomorrows():
    """Tomorrow's patients of 王醫師, one for each outcome, counted by hand:
    SMS 3 (sms, prefers_sms, twice), LINE 1, no consent 1, withdrawn 1, no contact point 1,
    erased 1; and four who are not in the group (cancelled, another doctor, another day,
    another department when one is chosen is tested apart)."""
    p = {}
    p["sms"] = PatientFactory()
    grant(p["sms"], channel=Channel.SMS)
    p["line"] = PatientFactory(line_user_id=line_id(1), preferred_channel=Channel.LINE)
    grant(p["line"], channel=Channel.LINE)
    grant(p["line"], channel=Channel.SMS)
    # Agreed to both, prefers SMS: SMS, although the group's order puts LINE first.
    p["prefers_sms"] = PatientFactory(line_user_id=line_id(2), preferred_channel=Channel.SMS)
    grant(p["prefers_sms"], channel=Channel.LINE)
    grant(p["prefers_sms"], channel=Channel.SMS)
    p["twice"] = PatientFactory()  # two appointments that day: one message
    grant(p["twice"], channel=Channel.SMS)
    p["no_consent"] = PatientFactory()
    grant(p["no_consent"], purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)  # not care
    p["withdrawn"] = PatientFactory()
    withdraw(p["withdrawn"], channel=Channel.SMS)
    p["no_address"] = PatientFactory()  # LINE agreed, no LINE account linked
    grant(p["no_address"], channel=Channel.LINE)
    p["erased"] = PatientFactory()
    grant(p["erased"], channel=Channel.SMS)
    for patient in p.values():
        booked(patient)
    booked(p["twice"], department="心臟內科")
    Patient.objects.filter(pk=p["erased"].pk).update(erased_at=NOW - dt.timedelta(days=1))

    outside = {
        "cancelled": booked(PatientFactory(), status=Appointment.Status.CANCELLED).patient,
        "other_doctor": booked(PatientFactory(), doctor="李醫師").patient,
        "other_day": booked(PatientFactory(), day=TOMORROW + dt.timedelta(days=1)).patient,
    }
    for patient in outside.values():
        grant(patient, channel=Channel.SMS)
    p["outside"] = outside
    return p


def day_group(**kwargs):
    return GroupDefinition(kind=GroupSend.Kind.DAY, day=TOMORROW, doctor=DOCTOR, **kwargs)


def preview(definition=None, *, purpose=Purpose.CARE, body=TEXT, urgent=False, at=NOW):
    with time_machine.travel(at, tick=False):  # the token is signed at this moment
        return group_preview(
            definition=definition or day_group(),
            purpose=purpose,
            body=body,
            urgent=urgent,
            now=at,
            profile=_profile(),
        )


def _profile():
    from patients.models import ClinicProfile

    return ClinicProfile.load()


def send(token, user, at=NOW):
    with time_machine.travel(at, tick=False):
        return group_send(token=token, by=user, now=at, profile=_profile(), path="/desk/groups/")


def test_counts_each_channel_and_each_reason_as_counted_by_hand(tomorrows):
    counts = group_counts(day_group(), purpose=Purpose.CARE, now=NOW)

    assert counts.channels == {"sms": 3, "line": 1}
    assert counts.excluded == {
        SkipReason.NO_CONSENT: 1,
        SkipReason.WITHDRAWN: 1,
        SkipReason.NO_CONTACT_POINT: 1,
        SkipReason.ERASED: 1,
    }
    assert counts.total == 8 and counts.reached == 4


def test_the_sql_count_decides_as_the_policy_does_row_by_row(tomorrows):
    # The CASE in reminders.groups against campaigns.policy.pick_channel on the same facts.
    rule = group_rule(Purpose.CARE)
    patients = group_patients(day_group(), today=TOMORROW - dt.timedelta(days=1))
    annotations = policy_annotations(rule=rule, patient_ref="id", at=NOW)
    rows = patients.annotate(**annotations).values("pk", "preferred_channel", *annotations)
    from reminders.groups import _annotated

    outcomes = dict(_annotated(patients, rule=rule, now=NOW).values_list("pk", "outcome"))
    for row in rows:
        decision = pick_channel(row, channel_order_for(rule, row["preferred_channel"]))
        assert outcomes[row["pk"]] == decision.reason, row["pk"]


def test_a_channel_that_is_off_is_its_own_reason(tomorrows, settings):
    settings.REMINDER_CHANNELS = {**settings.REMINDER_CHANNELS, "line": ""}

    counts = group_counts(day_group(), purpose=Purpose.CARE, now=NOW)

    # The LINE patient agreed to SMS too: SMS. No one else had only LINE with an account.
    assert counts.channels == {"sms": 4}
    assert SkipReason.CHANNEL_NOT_CONFIGURED not in counts.excluded
    only_line = PatientFactory(line_user_id=line_id(9))
    grant(only_line, channel=Channel.LINE)
    booked(only_line)
    counts = group_counts(day_group(), purpose=Purpose.CARE, now=NOW)
    assert counts.excluded[SkipReason.CHANNEL_NOT_CONFIGURED] == 1


def test_the_day_group_can_be_narrowed_to_a_department(tomorrows):
    counts = group_counts(day_group(department="心臟內科"), purpose=Purpose.CARE, now=NOW)

    assert counts.channels == {"sms": 1} and counts.excluded == {}


def test_a_segment_with_every_filter(db):
    hypertension = Condition.objects.create(code="htn", label_zh="高血壓", label_en="Hypertension")

    def patient(*, born=dt.date(1960, 3, 15), sex=Patient.Sex.FEMALE, condition=True, **visit):
        p = PatientFactory(birth_date=born, sex=sex)
        grant(p, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)
        if condition:
            p.conditions.add(hypertension)
        VisitFactory(
            patient=p,
            department=visit.get("department", "家醫科"),
            visited_on=visit.get("on", dt.date(2025, 6, 1)),
        )
        return p

    fits = patient()
    patient(born=dt.date(1990, 1, 1))  # 36: too young
    patient(born=dt.date(1950, 3, 10))  # 76 today: too old
    edge = patient(born=dt.date(1951, 3, 11))  # 74, 75 tomorrow: still in
    patient(sex=Patient.Sex.MALE)
    patient(condition=False)
    patient(department="眼科")
    patient(on=dt.date(2026, 2, 1))  # came back since
    patient(on=dt.date(2024, 12, 1))  # too long ago
    segment = GroupDefinition(
        kind=GroupSend.Kind.SEGMENT,
        min_age=60,
        max_age=75,
        sex=Patient.Sex.FEMALE,
        condition="htn",
        department="家醫科",
        visited_after=dt.date(2025, 1, 1),
        visited_before=dt.date(2026, 1, 1),
    )

    members = set(group_patients(segment, today=NOW.date()).values_list("pk", flat=True))
    counts = group_counts(segment, purpose=Purpose.RELATIONSHIP, now=NOW)

    assert members == {fits.pk, edge.pk}
    assert counts.channels == {"sms": 2}
    # The same patients asked for care: they agreed to relationship messages only.
    assert group_counts(segment, purpose=Purpose.CARE, now=NOW).excluded == {
        SkipReason.NO_CONSENT: 2
    }


def test_the_frequency_cap_excludes_relationship_messages(db, settings):
    settings.RELATIONSHIP_MESSAGES_PER_30_DAYS = 1
    p = PatientFactory()
    grant(p, purpose=Purpose.RELATIONSHIP)
    OutboxMessage.objects.create(
        rule=group_rule(Purpose.RELATIONSHIP),
        patient=p,
        occurrence_key="earlier",
        purpose=Purpose.RELATIONSHIP,
        channel="sms",
        due_at=NOW - dt.timedelta(days=3),
        next_attempt_at=NOW - dt.timedelta(days=3),
        expires_at=NOW - dt.timedelta(days=2),
        sent_at=NOW - dt.timedelta(days=3),
        status=Status.SENT,
        body="x",
    )
    segment = GroupDefinition(kind=GroupSend.Kind.SEGMENT)

    counts = group_counts(segment, purpose=Purpose.RELATIONSHIP, now=NOW)

    assert counts.excluded == {SkipReason.FREQUENCY_CAP: 1}


def test_nothing_is_queued_before_the_confirmation(tomorrows):
    shown = preview()

    assert shown.counts.reached == 4 and shown.text == TEXT
    assert not OutboxMessage.objects.exists() and not GroupSend.objects.exists()


def test_confirming_queues_one_message_per_reachable_patient(tomorrows, manager_user):
    shown = preview()

    group, queued = send(shown.token, manager_user)

    assert queued and group.queued == 4 and group.counts == shown.counts.as_dict()
    assert group.body == TEXT and group.created_by == manager_user
    messages = OutboxMessage.objects.filter(rule__kind=RuleKind.GROUP)
    assert {(m.patient_id, m.channel) for m in messages} == {
        (tomorrows["sms"].pk, "sms"),
        (tomorrows["line"].pk, "line"),
        (tomorrows["prefers_sms"].pk, "sms"),
        (tomorrows["twice"].pk, "sms"),
    }
    assert {m.occurrence_key for m in messages} == {f"group:{group.pk}"}
    assert all(m.purpose == Purpose.CARE and m.body == TEXT for m in messages)
    # "The doctor is late" is of no use after tomorrow.
    assert {m.expires_at for m in messages} == {taipei(2026, 3, 12)}


def test_a_second_submit_of_the_same_confirmation_adds_nothing(tomorrows, manager_user):
    shown = preview()
    first, queued = send(shown.token, manager_user)

    again, queued_again = send(shown.token, manager_user, at=NOW + dt.timedelta(seconds=2))

    assert queued and not queued_again and again.pk == first.pk
    assert OutboxMessage.objects.count() == 4 and GroupSend.objects.count() == 1


def test_a_group_that_changed_since_the_preview_is_shown_again(tomorrows, manager_user):
    shown = preview()
    newcomer = PatientFactory()
    grant(newcomer)
    booked(newcomer)

    with pytest.raises(GroupChanged) as changed:
        send(shown.token, manager_user)

    assert changed.value.preview.counts.channels == {"sms": 4, "line": 1}
    assert not OutboxMessage.objects.exists()
    # The new preview's own token sends.
    group, _ = send(changed.value.preview.token, manager_user)
    assert group.queued == 5


def test_a_tampered_or_expired_confirmation_is_refused(tomorrows, manager_user, settings):
    shown = preview()

    with pytest.raises(GroupRefused):
        send(shown.token[:-2] + "xx", manager_user)
    with pytest.raises(GroupRefused, match="expired|逾時"):
        send(shown.token, manager_user, at=NOW + dt.timedelta(minutes=31))
    assert not OutboxMessage.objects.exists()


def test_at_night_it_waits_for_the_send_window(tomorrows, manager_user, memory_channels):
    night = taipei(2026, 3, 10, 22, 30)
    shown = preview(at=night)
    assert shown.sends_at == taipei(2026, 3, 11, 9, 0)

    send(shown.token, manager_user, at=night)
    dispatch(night + dt.timedelta(minutes=1))

    assert memory_channels == []
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.QUEUED}
    dispatch(taipei(2026, 3, 11, 9, 1))
    assert len(memory_channels) == 4


def test_urgent_goes_at_once_outside_the_window_for_todays_patients(
    tomorrows, manager_user, memory_channels
):
    early = taipei(2026, 3, 11, 7, 30)  # tomorrow's patients are today's by now
    shown = preview(urgent=True, at=early)
    assert shown.sends_at == early

    send(shown.token, manager_user, at=early)
    dispatch(early + dt.timedelta(minutes=1))

    assert len(memory_channels) == 4


def test_urgent_is_never_sent_at_night(tomorrows, manager_user, memory_channels):
    # Before URGENT_SEND_FROM (07:00) it waits for it; from URGENT_SEND_UNTIL (22:00) the day's
    # group message is of no use any more and refused.
    small_hours = taipei(2026, 3, 11, 5, 0)
    shown = preview(urgent=True, at=small_hours)
    assert shown.sends_at == taipei(2026, 3, 11, 7, 0)

    send(shown.token, manager_user, at=small_hours)
    dispatch(small_hours + dt.timedelta(minutes=1))
    assert memory_channels == []
    dispatch(taipei(2026, 3, 11, 7, 1))
    assert len(memory_channels) == 4

    with pytest.raises(GroupRefused):
        preview(urgent=True, at=taipei(2026, 3, 11, 22, 0))


def test_an_urgent_message_left_over_at_night_is_dropped_not_sent(
    tomorrows, manager_user, memory_channels
):
    evening = taipei(2026, 3, 11, 21, 30)
    send(preview(urgent=True, at=evening).token, manager_user, at=evening)

    dispatch(taipei(2026, 3, 11, 22, 5))  # the worker was down until after 22:00

    assert memory_channels == []
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.DROPPED}


def test_urgent_is_refused_for_another_day_or_a_segment(tomorrows):
    with pytest.raises(GroupRefused, match="Urgent|緊急"):
        preview(urgent=True)  # tomorrow, asked today
    with pytest.raises(GroupRefused, match="Urgent|緊急"):
        preview(GroupDefinition(kind=GroupSend.Kind.SEGMENT), urgent=True)


def test_a_group_bigger_than_the_cap_is_refused(tomorrows, settings):
    settings.GROUP_MESSAGE_MAX = 7

    with pytest.raises(GroupRefused) as refused:
        preview()

    assert "8" in str(refused.value) and "7" in str(refused.value)


def test_the_front_desk_sends_to_a_day_group_only(tomorrows, front_desk_user):
    group, queued = send(preview().token, front_desk_user)
    assert queued and group.queued == 4

    segment = preview(GroupDefinition(kind=GroupSend.Kind.SEGMENT, sex=Patient.Sex.FEMALE))
    with pytest.raises(GroupRefused):
        send(segment.token, front_desk_user)


def test_each_send_is_audited_without_patient_data(tomorrows, manager_user):
    group, _ = send(preview().token, manager_user)

    entry = AuditEntry.objects.get(action=AuditEntry.Action.SEND)
    assert entry.actor == manager_user
    assert f"group message {group.pk}" in entry.detail and "4 queued" in entry.detail
    assert DOCTOR in entry.detail and TEXT not in entry.detail
    assert not entry.patients.exists()


def test_the_messages_reach_the_fake_providers(tomorrows, manager_user, fake_twilio, fake_line):
    send(preview().token, manager_user)

    dispatch(NOW + dt.timedelta(minutes=1))
    dispatch(NOW + dt.timedelta(minutes=2))

    assert OutboxMessage.objects.filter(status=Status.SENT).count() == 4
    assert sorted(r.form["Body"][0] for r in fake_twilio.requests) == [TEXT] * 3
    (pushed,) = fake_line.delivered
    assert pushed["to"] == line_id(1) and pushed["messages"][0]["text"] == TEXT


def test_withdrawn_after_the_send_the_gate_still_stops_it(tomorrows, manager_user, memory_channels):
    send(preview().token, manager_user)
    withdraw(tomorrows["sms"], channel=Channel.SMS)

    dispatch(NOW + dt.timedelta(minutes=1))

    assert len(memory_channels) == 3


def test_an_appointment_cancelled_or_moved_after_the_send_is_not_messaged(
    tomorrows, manager_user, memory_channels
):
    send(preview().token, manager_user)
    Appointment.objects.filter(patient=tomorrows["sms"]).update(status=Appointment.Status.CANCELLED)
    Appointment.objects.filter(patient=tomorrows["line"]).update(doctor="李醫師")
    # Of "twice"'s two appointments one is cancelled: the other still makes them one of the group.
    Appointment.objects.filter(patient=tomorrows["twice"], department="心臟內科").update(
        status=Appointment.Status.CANCELLED
    )

    dispatch(NOW + dt.timedelta(minutes=1))

    assert len(memory_channels) == 2  # prefers_sms and twice
    dropped = OutboxMessage.objects.filter(status=Status.DROPPED)
    assert set(dropped.values_list("patient", flat=True)) == {
        tomorrows["sms"].pk,
        tomorrows["line"].pk,
    }
    assert all(
        ("no longer in the group" in m.error) or ("已不在群組中" in m.error) for m in dropped
    )


def test_the_counts_are_one_aggregate_query_whatever_the_group_size(
    tomorrows, django_assert_max_num_queries
):
    group_rule(Purpose.CARE)  # made once, on the first use
    for _ in range(20):
        patient = PatientFactory()
        grant(patient)
        booked(patient)

    with django_assert_max_num_queries(2):  # the group's rule, then the counts
        counts = group_counts(day_group(), purpose=Purpose.CARE, now=NOW)

    assert counts.channels["sms"] == 23


def test_a_group_is_queued_page_by_page(tomorrows, manager_user, monkeypatch):
    import reminders.groups

    monkeypatch.setattr(reminders.groups, "BATCH", 3)  # 4 patients: two pages

    group, _ = send(preview().token, manager_user)

    assert group.queued == 4 and OutboxMessage.objects.count() == 4
