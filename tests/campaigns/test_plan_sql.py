"""The planner's two ways of planning a rule decide the same, row for row: the one statement of
campaigns.plan_sql (PostgreSQL) and the Python walk over plan_decision (SQLite, dry runs, and
the reference). On a seeded clinic with its history, rules narrowed by audience, a holdout, a
channel switched off and a template in one language only, at the moments a clinic lives with:
a morning, late at night, the day before a closed day, a closed day and a holiday.

Every other planner test runs on both databases, and so through both ways; this one compares
them on the same data, so that a difference in any column shows here by name.
"""

import datetime as dt
from collections import Counter
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, transaction

from campaigns import planner
from campaigns.models import MessageTemplate, Rule, Skip
from consent.models import Channel, Purpose
from patients.models import ClinicDay, ClinicProfile, Condition, Patient
from reminders.channels.base import _load
from reminders.models import OutboxMessage
from tests.factories import AppointmentFactory, PatientFactory, grant
from tests.helpers import MEMORY, only, plan, taipei

pytestmark = pytest.mark.django_db

SEEDED = taipei(2026, 11, 20, 9, 0)  # a Friday
MOMENTS = [
    taipei(2026, 11, 20, 8, 0),  # a Friday morning
    taipei(2026, 11, 20, 23, 30),  # late at night: nothing may go before tomorrow's window
    taipei(2026, 11, 21, 8, 0),  # Saturday: the day before the closed Sunday
    taipei(2026, 11, 22, 8, 0),  # Sunday, closed
    taipei(2026, 11, 24, 8, 0),  # a holiday
]
MESSAGE_FIELDS = (
    "patient_id",
    "occurrence_key",
    "purpose",
    "channel",
    "channels_left",
    "status",
    "priority",
    "due_at",
    "next_attempt_at",
    "expires_at",
    "anchor_at",
    "appointment_id",
    "procedure_id",
    "prescription_id",
    "refill_window_id",
    "subject",
    "body",
    "segments",
    "country",
)


@pytest.fixture
def clinic_with_history(settings):
    if connection.vendor != "postgresql":
        pytest.skip("campaigns.plan_sql plans on PostgreSQL only")
    settings.DEBUG = True  # seed_demo refuses to run elsewhere
    settings.RELATIONSHIP_MESSAGES_PER_30_DAYS = 1
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:8000"
    # E-mail is off here: patients who consented to e-mail only are channel_off.
    settings.REMINDER_CHANNELS = {"sms": MEMORY, "line": MEMORY}
    _load.cache_clear()
    with time_machine.travel(SEEDED, tick=False):
        call_command("seed_demo", patients=400, seed=7, stdout=StringIO())
    profile = ClinicProfile.load()
    profile.closed_weekdays = [6]
    profile.save()
    ClinicDay.objects.create(date=dt.date(2026, 11, 24), open=False, kind=ClinicDay.Kind.HOLIDAY)
    _narrow_some_rules()
    _greeted_lately()
    erased = Patient.objects.filter(appointments__isnull=False).order_by("pk")[:5]
    Patient.objects.filter(pk__in=list(erased.values_list("pk", flat=True))).update(
        erased_at=SEEDED
    )
    return profile


def _narrow_some_rules() -> None:
    """Audiences, a holdout and a LINE text in English only, so every check has rows."""
    birthday = Rule.objects.get(name__startswith="生日祝福")
    birthday.sexes, birthday.min_age, birthday.max_age = ["F"], 30, 70
    birthday.holdout_percent = 20
    birthday.save()
    notice = Rule.objects.get(name__startswith="回診通知")
    notice.departments = ["家醫科", "心臟內科"]
    notice.save()
    recall = Rule.objects.get(name__startswith="慢性病回診召回")
    recall.conditions.set(Condition.objects.filter(code="diabetes"))
    MessageTemplate.objects.filter(rule__name__startswith="術後", channel="line").exclude(
        language="en"
    ).delete()


def _greeted_lately() -> None:
    """Every other patient with a birthday in these days had a greeting ten days ago: at the
    cap of one relationship message in 30 days."""
    rule = Rule.objects.get(name__startswith="生日祝福")
    sent = SEEDED - dt.timedelta(days=10)
    birthdays = Patient.objects.filter(birth_mmdd__range=(1119, 1125)).order_by("pk")[::2]
    OutboxMessage.objects.bulk_create(
        OutboxMessage(
            rule=rule,
            patient=patient,
            occurrence_key="earlier",
            purpose=rule.purpose,
            channel="sms",
            status="sent",
            due_at=sent,
            next_attempt_at=sent,
            sent_at=sent,
            expires_at=sent + dt.timedelta(hours=12),
            body="生日快樂",
        )
        for patient in birthdays
    )


def _planned(rule: Rule, now: dt.datetime, *, in_sql: bool) -> tuple[set, set, Counter]:
    """What one pass of `rule` at `now` writes, either way, rolled back after."""
    profile = ClinicProfile.load()
    first_new = (OutboxMessage.objects.order_by("-id").values_list("id", flat=True).first()) or 0
    sid = transaction.savepoint()
    try:
        if in_sql:
            result = planner.plan_rule(rule, now=now, profile=profile)
        else:
            templates = {(t.channel, t.language): t for t in rule.templates.all()}
            result = planner._plan_in_python(
                rule, templates, now=now, profile=profile, dry_run=False
            )
        messages = {
            tuple(tuple(v) if isinstance(v, list) else v for v in message)  # channels_left
            for message in OutboxMessage.objects.filter(rule=rule, id__gt=first_new).values_list(
                *MESSAGE_FIELDS
            )
        }
        skips = set(
            Skip.objects.filter(rule=rule, at=now).values_list(
                "patient_id", "occurrence_key", "reason"
            )
        )
    finally:
        transaction.savepoint_rollback(sid)
    return messages, skips, Counter({"queued": result.queued, **result.skipped})


def test_the_statement_plans_every_rule_as_the_python_walk_does(clinic_with_history):
    seen_reasons: Counter[str] = Counter()
    queued = 0
    for now in MOMENTS:
        with time_machine.travel(now, tick=False):
            for rule in Rule.objects.filter(enabled=True).prefetch_related("conditions"):
                in_sql = _planned(rule, now, in_sql=True)
                in_python = _planned(rule, now, in_sql=False)
                where = f"{rule.name} at {now:%m-%d %H:%M}"
                assert in_sql[0] - in_python[0] == set(), f"{where}: messages only in SQL"
                assert in_python[0] - in_sql[0] == set(), f"{where}: messages only in Python"
                assert in_sql[1] == in_python[1], f"{where}: skips differ"
                assert in_sql[2] == in_python[2], f"{where}: counts differ"
                queued += len(in_sql[0])
                seen_reasons.update(reason for _p, _k, reason in in_sql[1])
    # Not a comparison of two empty sets: both ways had messages and skips of every kind here.
    assert queued > 40, seen_reasons
    assert {
        "no_consent",
        "withdrawn",
        "no_contact_point",
        "outside_audience",
        "holdout",
        "channel_off",
        "stale",
        "no_template",
        "frequency_cap",
        "already_confirmed",
        "erased",
    } <= set(seen_reasons), seen_reasons


def test_an_appointment_key_keeps_its_seconds_and_microseconds(clinic, memory_channels):
    """The occurrence key names the visit's start in UTC as Python's isoformat() writes it: a
    key written differently by the statement would plan the same visit twice."""
    if connection.vendor != "postgresql":
        pytest.skip("campaigns.plan_sql plans on PostgreSQL only")
    rule = only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    starts = taipei(2026, 12, 1, 14, 30, 15, 123456)
    appointment = AppointmentFactory(patient=patient, starts_at=starts)
    now = taipei(2026, 11, 24, 8, 0)
    in_python = _planned(rule, now, in_sql=False)[0]

    plan(now)
    plan(now + dt.timedelta(minutes=5))

    message = OutboxMessage.objects.get()
    assert (
        message.occurrence_key
        == f"appointment:{appointment.pk}:{starts.astimezone(dt.UTC).isoformat()}"
    )
    assert {m[1] for m in in_python} == {message.occurrence_key}


def test_a_visit_day_reminder_plans_the_same_both_ways(clinic, memory_channels):
    """An appointment rule whose offsets name no day before the visit (a reminder the morning
    of it): no day-before facts to look up in SQL."""
    if connection.vendor != "postgresql":
        pytest.skip("campaigns.plan_sql plans on PostgreSQL only")
    rule = only("回診通知")
    rule.offsets = [0]
    rule.save()
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 11, 24, 15, 0))
    now = taipei(2026, 11, 24, 8, 0)

    in_sql, in_python = _planned(rule, now, in_sql=True), _planned(rule, now, in_sql=False)

    assert in_sql == in_python and len(in_sql[0]) == 1


def test_a_rule_with_no_channel_configured_skips_the_same_both_ways(clinic, settings):
    if connection.vendor != "postgresql":
        pytest.skip("campaigns.plan_sql plans on PostgreSQL only")
    settings.REMINDER_CHANNELS = {}
    rule = only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    now = taipei(2026, 11, 24, 8, 0)

    in_sql, in_python = _planned(rule, now, in_sql=True), _planned(rule, now, in_sql=False)

    assert in_sql == in_python
    assert in_sql[1] == {(patient.pk, next(iter(in_sql[1]))[1], "channel_off")}
