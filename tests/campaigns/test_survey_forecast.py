"""The visit survey in the week ahead: the forecast counts what planning each day then queues,
including a patient not asked twice within SURVEY_MIN_DAYS across the week's days, and the
planner and the gate agree on who was asked lately."""

import datetime as dt
from collections import Counter

import pytest

from campaigns.forecast import week_ahead
from campaigns.kinds import KINDS
from campaigns.models import Rule, RuleKind
from consent.models import Channel, Purpose
from reminders.models import OutboxMessage, Status
from tests.factories import PatientFactory, VisitFactory, grant
from tests.helpers import only, plan, taipei

pytestmark = pytest.mark.django_db
NOW = taipei(2026, 12, 3, 8, 0)  # a Thursday; Sundays closed


@pytest.fixture(params=[Purpose.RELATIONSHIP, Purpose.CARE])
def survey(clinic, request):
    """Shipped as a relationship rule (read by the forecast day by day); a clinic may make it
    care (the whole week in one query, rows in no order of day)."""
    clinic.closed_weekdays = [6]
    clinic.save()
    rule = only("就診滿意度")
    Rule.objects.filter(pk=rule.pk).update(enabled=True, purpose=request.param)
    rule.refresh_from_db()
    return rule


def patient_with_visits(*days):
    patient = PatientFactory()
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    grant(patient, Purpose.CARE, Channel.SMS)
    for day in days:
        VisitFactory(patient=patient, visited_on=dt.date(2026, 12, day))
    return patient


def test_the_forecast_is_what_planning_each_day_then_queues(survey):
    patient_with_visits(2)  # asked on Thursday 12-03
    patient_with_visits(4)  # Saturday 12-05
    patient_with_visits(2, 7)  # asked Thursday, not again on Tuesday 12-08
    patient_with_visits(5)  # due on Sunday, closed: a survey is good on its day only, none

    forecast = Counter()
    for row in week_ahead(now=NOW):
        forecast[row.day] += row.messages

    for d in range(3, 10):
        plan(taipei(2026, 12, d, 0, 0) if d > 3 else NOW)
    queued = Counter(
        m.next_attempt_at.astimezone(NOW.tzinfo).date()
        for m in OutboxMessage.objects.filter(rule=survey)
    )
    assert queued == {dt.date(2026, 12, 3): 2, dt.date(2026, 12, 5): 1}
    assert forecast == {day: n for day, n in queued.items() if day <= dt.date(2026, 12, 9)}


def test_the_gate_drops_a_second_survey_sent_within_the_period(survey):
    patient = patient_with_visits(2)
    plan(NOW)
    first = OutboxMessage.objects.get(rule=survey)
    second = OutboxMessage.objects.create(
        rule=survey,
        patient=patient,
        occurrence_key="survey:visit:0",
        purpose=survey.purpose,
        channel="sms",
        due_at=first.due_at + dt.timedelta(days=3),
        next_attempt_at=first.due_at + dt.timedelta(days=3),
        expires_at=first.due_at + dt.timedelta(days=4),
        body="…",
    )
    still_true = KINDS[RuleKind.VISIT_SURVEY].still_true

    assert still_true(second) == ""  # the first is only queued: it has not asked yet
    OutboxMessage.objects.filter(pk=first.pk).update(status=Status.SENT, sent_at=first.due_at)
    assert still_true(second) != ""
