"""Retention: a final message's words, old delivery attempts and old skip records are erased
after their settings' days, in batches; the rows the figures come from, the audit log and the
consent ledger stay."""

from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import Schedule

from campaigns.models import Rule, Skip, SkipReason
from consent.models import ConsentEntry, Purpose
from patients.models import AuditEntry
from patients.services import audit_record
from reminders.models import Attempt, OutboxMessage, Status
from reminders.retention import retention_apply
from tests.factories import PatientFactory, grant
from tests.helpers import taipei

pytestmark = pytest.mark.django_db

NOW = taipei(2026, 12, 3, 3, 0)


@pytest.fixture(autouse=True)
def _retention(settings):
    settings.RETAIN_MESSAGE_TEXT_DAYS = 180
    settings.RETAIN_ATTEMPTS_DAYS = 400
    settings.RETAIN_SKIPS_DAYS = 400


def message(n: int, *, days_ago: int, status: str = Status.DELIVERED) -> OutboxMessage:
    due = NOW - timedelta(days=days_ago)
    created = OutboxMessage.objects.create(
        rule=Rule.objects.order_by("pk").first(),
        patient=PatientFactory(),
        occurrence_key=f"retention-{n}",
        purpose=Purpose.CARE,
        channel="sms",
        status=status,
        due_at=due,
        next_attempt_at=due,
        expires_at=due + timedelta(days=1),
        sent_at=due if status != Status.QUEUED else None,
        subject="",
        body="王小明您好，明天上午十點回診",
        segments=2,
    )
    Attempt.objects.create(
        message=created, channel="sms", started_at=due, outcome=Attempt.Outcome.SENT
    )
    return created


def stored(message: OutboxMessage) -> OutboxMessage:
    return OutboxMessage.objects.get(pk=message.pk)


def test_the_words_of_a_final_message_go_after_the_retention_days_and_its_row_stays():
    old = message(1, days_ago=181)
    recent = message(2, days_ago=179)

    done = retention_apply(now=NOW)

    assert done["message texts"] == 1
    kept = stored(old)
    assert (kept.body, kept.subject) == ("", "")
    # What the figures need stays: who, when, which channel, what it cost, how it ended.
    assert (kept.status, kept.channel, kept.segments) == (Status.DELIVERED, "sms", 2)
    assert kept.sent_at == NOW - timedelta(days=181)
    assert stored(recent).body == "王小明您好，明天上午十點回診"


def test_a_message_still_to_be_sent_keeps_its_words_however_old():
    waiting = message(1, days_ago=300, status=Status.QUEUED)
    sending = message(2, days_ago=300, status=Status.SENDING)

    retention_apply(now=NOW)

    assert stored(waiting).body and stored(sending).body


def test_old_attempts_and_skips_go_and_newer_ones_stay():
    old, recent = message(1, days_ago=401), message(2, days_ago=399)
    rule, patient = Rule.objects.order_by("pk").first(), PatientFactory()
    for key, days in (("old", 401), ("recent", 399)):
        Skip.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key=key,
            reason=SkipReason.NO_CONSENT,
            at=NOW - timedelta(days=days),
        )

    done = retention_apply(now=NOW)

    assert done["attempts"] == 1 and done["skips"] == 1
    assert not Attempt.objects.filter(message=old).exists()
    assert Attempt.objects.filter(message=recent).exists()
    assert list(Skip.objects.values_list("occurrence_key", flat=True)) == ["recent"]


def test_zero_days_keeps_everything(settings):
    old = message(1, days_ago=3000)

    settings.RETAIN_MESSAGE_TEXT_DAYS = settings.RETAIN_ATTEMPTS_DAYS = 0
    settings.RETAIN_SKIPS_DAYS = 0
    done = retention_apply(now=NOW)

    assert sum(done.values()) == 0
    assert stored(old).body and Attempt.objects.filter(message=old).exists()


def test_work_is_done_in_batches_and_a_second_run_finds_nothing():
    for n in range(7):
        message(n, days_ago=500)

    with CaptureQueriesContext(connection) as queries:
        first = retention_apply(now=NOW, batch=3)
    second = retention_apply(now=NOW, batch=3)

    assert first["message texts"] == 7 and first["attempts"] == 7
    updates = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "reminders_outboxmessage"')]
    assert len(updates) == 3  # 3 + 3 + 1 rows
    assert sum(second.values()) == 0


def test_the_audit_log_and_the_consent_ledger_are_never_erased():
    with time_machine.travel(NOW - timedelta(days=3650), tick=False):
        patient = PatientFactory()
        grant(patient)
        audit_record(actor="test", action="view", patients=[patient], detail="ten years ago")

    retention_apply(now=NOW)

    assert AuditEntry.objects.count() == 1
    assert ConsentEntry.objects.count() == 1


def test_setup_schedules_runs_retention_daily():
    call_command("setup_schedules", stdout=open("/dev/null", "w"))  # noqa: SIM115

    schedule = Schedule.objects.get(func="reminders.tasks.retention_task")
    assert (schedule.schedule_type, schedule.minutes) == (Schedule.MINUTES, 24 * 60)
