"""The week ahead (campaigns.forecast.week_ahead) against a hand-computed week.

The week: Thursday 2026-12-03 08:00 (Taipei) through Wednesday 2026-12-09; the clinic is closed
on Sundays (2026-12-06), its send window 09:00–21:00. Three shipped rules on: 生日祝福 (birthday,
relationship, day 0), 回診確認 (appointment, the day before), 慢箋可領藥 (refill window opens).
"""

import datetime as dt
from collections import Counter

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns.forecast import ForecastRow, week_ahead
from campaigns.models import Rule, Skip
from consent.models import Channel, Purpose
from patients.models import ClinicProfile, Patient
from patients.services import prescription_sync_refills
from reminders.models import OutboxMessage, StaffTask, Status
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    VisitFactory,
    grant,
    withdraw,
)
from tests.helpers import plan, taipei

pytestmark = pytest.mark.django_db

NOW = taipei(2026, 12, 3, 8, 0)  # a Thursday
SUNDAY = 6
RULES = ["生日祝福", "回診確認", "慢箋可領藥"]


def day(d: int) -> dt.date:
    return dt.date(2026, 12, d)


@pytest.fixture
def week(clinic):
    """The hand-computed week; returns the rules by name."""
    clinic.closed_weekdays = [SUNDAY]
    clinic.save()
    Rule.objects.exclude(name__in=RULES).update(enabled=False)
    rules = {rule.name: rule for rule in Rule.objects.filter(name__in=RULES)}

    # Birthdays: Saturday's is sent on Saturday; Sunday's would only go out on Monday, after
    # the day it greets (stale); the patient without consent gets nothing.
    saturday = PatientFactory(birth_date=dt.date(1970, 12, 5))
    grant(saturday, Purpose.RELATIONSHIP, Channel.SMS)
    on_sunday = PatientFactory(birth_date=dt.date(1980, 12, 6))
    grant(on_sunday, Purpose.RELATIONSHIP, Channel.SMS)
    PatientFactory(birth_date=dt.date(1990, 12, 4))  # no consent

    # Appointments, reminded the day before: Friday's today; Monday's on Saturday (Sunday is
    # closed); Thursday 12-10's on Wednesday; Friday 12-11's after the week. One of Friday's
    # patients is already in the outbox (queued for today 10:00): counted once.
    def booked(when: dt.datetime, *, consent: bool = True, doctor: str = "王醫師"):
        patient = PatientFactory()
        if consent:
            grant(patient, Purpose.CARE, Channel.SMS)
        return AppointmentFactory(patient=patient, starts_at=when, doctor=doctor)

    booked(taipei(2026, 12, 4, 9, 30))
    already = booked(taipei(2026, 12, 4, 11, 0))
    booked(taipei(2026, 12, 4, 15, 0), consent=False)
    booked(taipei(2026, 12, 7, 10, 0), doctor="李醫師")
    booked(taipei(2026, 12, 10, 14, 0))
    booked(taipei(2026, 12, 11, 9, 0))
    plan(NOW)  # queues today's three reminders: Friday's two, and nothing else yet
    assert OutboxMessage.objects.filter(appointment=already, status=Status.QUEUED).exists()

    # A refill window opening on Tuesday 12-08 (28 days from 11-20: opens 10 days before).
    refill = PatientFactory()
    grant(refill, Purpose.CARE, Channel.SMS)
    prescription = PrescriptionFactory(
        patient=refill, start_date=dt.date(2026, 11, 20), days_supplied=28, refills=1
    )
    prescription_sync_refills(prescription=prescription)
    assert prescription.refill_windows.get(number=1).opens_on == day(8)
    return rules


def totals(rows: list[ForecastRow]) -> Counter[tuple[str, dt.date]]:
    names = dict(Rule.objects.values_list("pk", "name"))
    counts: Counter[tuple[str, dt.date]] = Counter()
    for row in rows:
        counts[names[row.rule_id], row.day] += row.messages
    return counts


def test_the_week_ahead_counts_each_message_once_on_the_day_it_goes_out(week):
    rows = week_ahead(now=NOW)

    assert totals(rows) == {
        ("回診確認", day(3)): 2,  # Friday's visits: one queued already, one due today
        ("生日祝福", day(5)): 1,
        ("回診確認", day(5)): 1,  # Monday's visit, moved before the closed Sunday
        ("慢箋可領藥", day(8)): 1,
        ("回診確認", day(9)): 1,
    }
    assert {row.channel for row in rows} == {"sms"}


def test_the_forecast_is_what_planning_each_day_then_queues(week):
    forecast = totals(week_ahead(now=NOW))

    for d in range(4, 10):
        plan(taipei(2026, 12, d, 0, 0))

    queued = Counter(
        (m.rule.name, m.next_attempt_at.astimezone(NOW.tzinfo).date())
        for m in OutboxMessage.objects.select_related("rule")
    )
    assert forecast == {key: n for key, n in queued.items() if key[1] <= day(9)}


def test_the_forecast_writes_nothing(week):
    before = (OutboxMessage.objects.count(), Skip.objects.count(), StaffTask.objects.count())

    with CaptureQueriesContext(connection) as queries:
        week_ahead(now=NOW)

    writes = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == []
    after = (OutboxMessage.objects.count(), Skip.objects.count(), StaffTask.objects.count())
    assert after == before


def test_filters_narrow_the_forecast(week):
    appointment_rule = week["回診確認"]
    birthday = Patient.objects.get(birth_date=dt.date(1970, 12, 5))
    VisitFactory(patient=birthday, department="眼科", visited_on=dt.date(2026, 11, 2))

    by_rule = week_ahead(now=NOW, rule_ids=[appointment_rule.pk])
    by_doctor = week_ahead(now=NOW, doctor="李醫師")
    by_department = week_ahead(now=NOW, department="家醫科")
    by_other_channel = week_ahead(now=NOW, channel="line")

    assert {row.rule_id for row in by_rule} == {appointment_rule.pk}
    assert sum(row.messages for row in by_rule) == 4
    assert by_doctor == [ForecastRow(appointment_rule.pk, day(5), "sms", 1)]
    # Patients with a visit or appointment there: the appointments' (all 家醫科), not the
    # birthday or refill patients.
    assert sum(row.messages for row in by_department) == 4
    assert by_other_channel == []
    # A birthday names no doctor, but the patient was seen in 眼科.
    assert week_ahead(now=NOW, department="眼科") == [
        ForecastRow(week["生日祝福"].pk, day(5), "sms", 1)
    ]


def test_a_shorter_horizon_stops_at_its_last_day(week):
    rows = week_ahead(now=NOW, days=2)

    assert totals(rows) == {("回診確認", day(3)): 2}


def test_a_disabled_rules_queued_messages_are_not_counted(week):
    Rule.objects.filter(name="回診確認").update(enabled=False)

    rows = week_ahead(now=NOW)

    assert totals(rows) == {("生日祝福", day(5)): 1, ("慢箋可領藥", day(8)): 1}


def test_withdrawn_or_unconfigured_channels_count_nothing_as_the_planner_skips_them(week, settings):
    # The forecast leaves out the withdrawal annotations (they only name a skip's reason).
    kept = PatientFactory(birth_date=dt.date(1975, 12, 4))
    grant(kept, Purpose.RELATIONSHIP, Channel.SMS)
    withdrawn = PatientFactory(birth_date=dt.date(1976, 12, 4))
    grant(withdrawn, Purpose.RELATIONSHIP, Channel.SMS)
    withdraw(withdrawn, Purpose.RELATIONSHIP, Channel.SMS)
    birthday = week["生日祝福"].pk

    assert totals(week_ahead(now=NOW, rule_ids=[birthday])) == {
        ("生日祝福", day(4)): 1,
        ("生日祝福", day(5)): 1,
    }

    # SMS switched off here: the consented patients' only channel is not configured.
    settings.REMINDER_CHANNELS = {
        name: path for name, path in settings.REMINDER_CHANNELS.items() if name != "sms"
    }
    assert week_ahead(now=NOW, rule_ids=[birthday]) == []
    plan(taipei(2026, 12, 4, 0, 0))
    assert not OutboxMessage.objects.filter(rule_id=birthday).exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_week_ahead_of_a_new_install_without_a_clinic_profile_row():
    # The forecast reads in a read-only snapshot on PostgreSQL; the profile's row must be made
    # before it, not inside it.
    ClinicProfile.objects.all().delete()

    assert week_ahead(now=timezone.now()) == []
    assert ClinicProfile.objects.exists()
