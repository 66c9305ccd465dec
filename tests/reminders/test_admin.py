import datetime as dt
import itertools

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Rule, Skip, SkipReason
from patients.models import AuditEntry
from reminders.models import Attempt, OutboxMessage, StaffTask, Status
from tests.factories import PatientFactory, ProcedureFactory

pytestmark = pytest.mark.django_db

OUTBOX = "admin:reminders_outboxmessage_changelist"
TASKS = "admin:reminders_stafftask_changelist"
_occurrence = itertools.count()


@pytest.fixture
def desk(client, front_desk_user):
    client.force_login(front_desk_user)
    return client


@pytest.fixture
def settler(client, manager_user):
    """A manager who may also settle messages whose outcome is unknown."""
    manager_user.user_permissions.add(Permission.objects.get(codename="change_outboxmessage"))
    client.force_login(manager_user)
    return client


def return_visit_rule() -> Rule:
    return Rule.objects.get(name__startswith="回診通知")


def outbox(patient, **fields) -> OutboxMessage:
    rule = fields.pop("rule", None) or return_visit_rule()
    due = fields.pop("due_at", None) or timezone.now()
    return OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key=f"test:{next(_occurrence)}",
        purpose=rule.purpose,
        channel=fields.pop("channel", "sms"),
        due_at=due,
        next_attempt_at=due,
        expires_at=due + dt.timedelta(days=1),
        body=fields.pop("body", "林小姐您好，12月1日（二）14:30 請回診。安心診所"),
        **fields,
    )


def unknown_message(patient, tried_at) -> OutboxMessage:
    """A message whose sender died mid-send, with the review task dispatch leaves for staff."""
    message = outbox(patient, status=Status.UNKNOWN, attempts=1, error="timeout")
    Attempt.objects.create(
        message=message, channel="sms", started_at=tried_at, outcome=Attempt.Outcome.UNKNOWN
    )
    StaffTask.objects.create(
        kind=StaffTask.Kind.REVIEW_UNKNOWN,
        patient=patient,
        message=message,
        due_on=timezone.localdate(),
        until=timezone.localdate(),
    )
    return message


def run_action(client, url, action, objects):
    return client.post(url, {"action": action, "_selected_action": [o.pk for o in objects]})


# --- outbox -----------------------------------------------------------------------------------


def test_outbox_page_shows_the_decrypted_text_and_audits_the_view(desk, front_desk_user):
    patient = PatientFactory(name="林美玲")
    message = outbox(patient, body="林小姐您好，明天下午請回診。")

    response = desk.get(reverse("admin:reminders_outboxmessage_change", args=[message.pk]))

    page = response.content.decode()
    assert response.status_code == 200
    assert "林小姐您好，明天下午請回診。" in page
    assert "林美玲" in page
    entry = AuditEntry.objects.get(action="view")
    assert entry.actor == front_desk_user
    assert list(entry.patients.all()) == [patient]


def test_a_planned_message_says_its_text_is_made_when_it_is_sent(desk):
    message = outbox(PatientFactory(), body="")

    response = desk.get(reverse("admin:reminders_outboxmessage_change", args=[message.pk]))

    assert "尚未產生：發送時依規則的範本產生。" in response.content.decode()


def test_a_sent_message_whose_text_retention_erased_shows_no_note(desk):
    message = outbox(PatientFactory(), body="", status=Status.SENT)

    response = desk.get(reverse("admin:reminders_outboxmessage_change", args=[message.pk]))

    assert "尚未產生" not in response.content.decode()


def test_outbox_list_audits_the_patients_shown(desk):
    shown = [outbox(PatientFactory()).patient for _ in range(3)]

    response = desk.get(reverse(OUTBOX))

    assert response.status_code == 200
    assert set(AuditEntry.objects.get(action="list").patients.all()) == set(shown)


def test_outbox_page_lists_the_delivery_attempts_for_the_manager(settler):
    message = unknown_message(PatientFactory(), tried_at=timezone.now())

    response = settler.get(reverse("admin:reminders_outboxmessage_change", args=[message.pk]))

    assert response.context["inline_admin_formsets"][0].formset.model is Attempt
    assert "timeout" in response.content.decode()


def test_outbox_cannot_be_edited_even_by_the_manager(settler):
    message = outbox(PatientFactory())

    response = settler.post(
        reverse("admin:reminders_outboxmessage_change", args=[message.pk]), {"body": "changed"}
    )

    assert response.status_code == 403
    assert OutboxMessage.objects.get(pk=message.pk).body != "changed"


def test_marking_an_unknown_message_as_sent_settles_it_and_closes_its_task(settler):
    # Given a message whose outcome is unknown and one that failed for good
    tried_at = timezone.now() - dt.timedelta(hours=2)
    unknown = unknown_message(PatientFactory(), tried_at=tried_at)
    failed = outbox(PatientFactory(), status=Status.FAILED, error="wrong number")

    # When staff mark both as sent
    run_action(settler, reverse(OUTBOX), "mark_sent", [unknown, failed])

    # Then only the unknown one changes, sent when it was handed to the provider
    unknown.refresh_from_db()
    assert unknown.status == Status.SENT
    assert unknown.sent_at == tried_at
    assert "confirmed sent" in unknown.error
    assert OutboxMessage.objects.get(pk=failed.pk).status == Status.FAILED
    assert StaffTask.objects.get(message=unknown).done_at is not None


def test_marking_an_unknown_message_as_failed(settler):
    unknown = unknown_message(PatientFactory(), tried_at=timezone.now())
    queued = outbox(PatientFactory())

    run_action(settler, reverse(OUTBOX), "mark_failed", [unknown, queued])

    assert OutboxMessage.objects.get(pk=unknown.pk).status == Status.FAILED
    assert OutboxMessage.objects.get(pk=queued.pk).status == Status.QUEUED


def test_front_desk_cannot_settle_unknown_messages(desk):
    unknown = unknown_message(PatientFactory(), tried_at=timezone.now())

    run_action(desk, reverse(OUTBOX), "mark_sent", [unknown])

    assert OutboxMessage.objects.get(pk=unknown.pk).status == Status.UNKNOWN


# --- staff tasks ------------------------------------------------------------------------------


def call_task(patient=None) -> StaffTask:
    procedure = ProcedureFactory(patient=patient or PatientFactory())
    today = timezone.localdate()
    return StaffTask.objects.create(
        kind=StaffTask.Kind.POSTOP_CALL,
        patient=procedure.patient,
        procedure=procedure,
        due_on=today,
        until=today + dt.timedelta(days=2),
    )


def test_front_desk_marks_a_call_task_done(desk):
    task = call_task()

    run_action(desk, reverse(TASKS), "mark_done", [task])

    assert StaffTask.objects.get(pk=task.pk).done_at is not None


def test_task_list_shows_open_tasks_unless_asked_and_audits_them(desk):
    open_task = call_task(PatientFactory(chart_no="A000001"))
    done_task = call_task(PatientFactory(chart_no="A000002"))
    StaffTask.objects.filter(pk=done_task.pk).update(done_at=timezone.now())

    shown = desk.get(reverse(TASKS)).context["cl"].result_list
    done = desk.get(reverse(TASKS), {"state": "done"}).context["cl"].result_list

    assert list(shown) == [open_task]
    assert list(done) == [done_task]
    first_list = AuditEntry.objects.filter(action="list").order_by("at", "pk").first()
    assert list(first_list.patients.all()) == [open_task.patient]


# --- the patient page -------------------------------------------------------------------------


def test_patient_page_says_why_a_reminder_was_not_sent(desk):
    # Given Mrs Lin, whose return-visit notice was skipped and whose recall failed
    patient = PatientFactory(name="林美玲")
    Skip.objects.create(
        rule=return_visit_rule(),
        patient=patient,
        occurrence_key="appointment:42",
        reason=SkipReason.WITHDRAWN,
        at=timezone.now(),
    )
    outbox(patient, status=Status.FAILED, error="sms: unreachable number")

    # When the front desk opens her page
    response = desk.get(
        reverse("admin:patients_patient_change", args=[patient.pk]), HTTP_ACCEPT_LANGUAGE="en"
    )

    # Then the page says what happened, without letting anyone edit it
    page = response.content.decode()
    assert "consent withdrawn" in page
    assert "appointment:42" in page
    assert "sms: unreachable number" in page
    formsets = {f.formset.model: f for f in response.context["inline_admin_formsets"]}
    for model in (OutboxMessage, Skip):
        assert not formsets[model].has_add_permission
        assert not formsets[model].has_change_permission
        assert not formsets[model].has_delete_permission


def test_patient_page_shows_the_newest_messages_and_links_to_the_rest(desk):
    patient = PatientFactory()
    start = timezone.now()
    for day in range(25):
        outbox(patient, due_at=start - dt.timedelta(days=day))

    response = desk.get(reverse("admin:patients_patient_change", args=[patient.pk]))

    messages = next(
        f.formset
        for f in response.context["inline_admin_formsets"]
        if f.formset.model is OutboxMessage
    )
    due = [form.instance.due_at for form in messages.forms]
    assert len(due) == 20
    assert due == sorted(due, reverse=True) and due[0] == start
    link = f"{reverse(OUTBOX)}?patient__id__exact={patient.pk}"
    assert link in response.content.decode()
    listed = desk.get(link).context["cl"].result_count
    assert listed == 25
