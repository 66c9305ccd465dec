"""A small hand-counted clinic for the dashboard: three rules (a return-visit reminder with a
20 % holdout, a recall, a refill reminder switched on 1 March), messages in every status, skips,
appointments with outcomes, refill windows and consent changes, all between 2 and 6 March
2026 (one week), looked at on 10 March with the range 1–9 March. The numbers the tests expect
are counted by hand in the comments here."""

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest
import time_machine

from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from consent.models import Channel, Purpose
from patients.models import Appointment, Patient, RefillWindow
from reminders.models import OutboxMessage, Status
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    VisitFactory,
    grant,
    withdraw,
)

TAIPEI = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 3, 10, 8, 0, tzinfo=TAIPEI)  # a Tuesday
RANGE = {"range": "custom", "start": "2026-03-01", "end": "2026-03-09"}


def at(day: int, hour: int = 10, month: int = 3) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, 0, tzinfo=TAIPEI)


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@dataclass
class Clinic:
    visit_rule: Rule
    recall_rule: Rule
    refill_rule: Rule
    patients: list[Patient]


def _message(rule, patient, n, *, status, channel="sms", due=None, sent=True, **kwargs):
    due = due or at(2 + n % 5)
    return OutboxMessage.objects.create(
        rule=rule,
        patient=patient,
        occurrence_key=f"test:{n}",
        purpose=rule.purpose,
        channel=channel,
        status=status,
        due_at=due,
        next_attempt_at=due,
        expires_at=due + dt.timedelta(days=2),
        sent_at=due + dt.timedelta(minutes=1) if sent else None,
        body="測試",
        **kwargs,
    )


@pytest.fixture
def small_clinic(db, frozen) -> Clinic:
    visit_rule = Rule.objects.create(
        name="測試回診提醒",
        kind=RuleKind.APPOINTMENT,
        purpose=Purpose.CARE,
        offsets=[-1],
        channel_order=["sms", "line"],
        holdout_percent=20,
        enabled_since=at(1, 0, month=1),
    )
    MessageTemplate.objects.create(rule=visit_rule, channel="sms", language="zh-hant", body="x")
    recall_rule = Rule.objects.create(
        name="測試召回",
        kind=RuleKind.RECALL,
        purpose=Purpose.CARE,
        offsets=[180],
        channel_order=["sms"],
    )
    refill_rule = Rule.objects.create(
        name="測試慢箋",
        kind=RuleKind.REFILL_OPENS,
        purpose=Purpose.CARE,
        offsets=[0],
        channel_order=["line"],
        enabled_since=at(1, 0),
    )
    p = [PatientFactory() for _ in range(12)]
    for patient in p[:3]:
        VisitFactory(patient=patient, department="家醫科", doctor="王醫師")
    for patient in p[3:]:
        VisitFactory(patient=patient, department="眼科", doctor="李醫師")

    def booking(patient, day, status, month=3, **kwargs):
        own = ("家醫科", "王醫師") if patient in p[:3] else ("眼科", "李醫師")
        return AppointmentFactory(
            patient=patient,
            starts_at=at(day, 9, month),
            status=status,
            department=own[0],
            doctor=own[1],
            **kwargs,
        )

    attended, no_show = Appointment.Status.ATTENDED, Appointment.Status.NO_SHOW
    a1 = booking(
        p[0], 3, attended, confirmed_via=Appointment.ConfirmedVia.REPLY, confirmed_at=at(2, 12)
    )
    a2 = booking(p[1], 4, no_show)
    a8 = booking(p[7], 3, attended)
    a9 = booking(p[8], 4, no_show)
    booking(p[2], 5, attended)  # not reminded: only in the weekly trend

    # Return-visit rule: 6 messages in range (one outside), 3 skips in range (one outside).
    # queued 6 · sent 2 (m1, m2) · delivered 1 · failed 1 · dropped 1 · unknown 1 · waiting 1
    # replied 1 · confirmed 1 (m1: a reply after it was sent) · outcome: attended 1, no-show 1
    _message(visit_rule, p[0], 0, status=Status.DELIVERED, appointment=a1, replied_at=at(2, 11),
             segments=2)  # fmt: skip
    _message(visit_rule, p[1], 1, status=Status.SENT, appointment=a2)
    _message(visit_rule, p[2], 2, status=Status.FAILED, channel="line", sent=False)
    _message(visit_rule, p[3], 3, status=Status.UNKNOWN, sent=False)
    _message(visit_rule, p[4], 4, status=Status.QUEUED, sent=False)
    _message(visit_rule, p[5], 5, status=Status.DROPPED, channel="line", sent=False)
    _message(visit_rule, p[6], 6, status=Status.DELIVERED, due=at(20, month=2))  # outside
    for patient, appointment in ((p[7], a8), (p[8], a9)):
        Skip.objects.create(
            rule=visit_rule,
            patient=patient,
            occurrence_key=f"appointment:{appointment.pk}:2026-03-03T01:00:00+00:00",
            reason=SkipReason.HOLDOUT,
            at=at(2),
        )
    Skip.objects.create(
        rule=visit_rule, patient=p[9], occurrence_key="x", reason=SkipReason.NO_CONSENT, at=at(3)
    )
    outside = at(9, 1, 2)
    Skip.objects.create(
        rule=visit_rule, patient=p[10], occurrence_key="y", reason=SkipReason.NO_CONSENT, at=outside
    )

    # Recall: two sent; p[3] books for 20 March (within 30 days), p[4] only for May.
    _message(recall_rule, p[3], 7, status=Status.SENT, due=at(2))
    _message(recall_rule, p[4], 8, status=Status.SENT, due=at(2))
    booking(p[3], 20, Appointment.Status.BOOKED)
    booking(p[4], 1, Appointment.Status.BOOKED, month=5)

    # Refill: two windows reminded by LINE, one picked up. Before the rule was switched on
    # (the 9 days before 1 March: 20–28 February) 1 of 3 windows closing then was picked up.
    def window(patient, closes, picked=None):
        rx = PrescriptionFactory(patient=patient, refills=0)
        return RefillWindow.objects.create(
            prescription=rx, number=1, opens_on=closes - dt.timedelta(days=9), closes_on=closes,
            picked_up_on=picked,
        )  # fmt: skip

    w1 = window(p[5], dt.date(2026, 3, 12), dt.date(2026, 3, 4))
    w2 = window(p[6], dt.date(2026, 3, 12))
    window(p[9], dt.date(2026, 2, 25), dt.date(2026, 2, 24))
    window(p[10], dt.date(2026, 2, 22))
    window(p[11], dt.date(2026, 2, 27))
    _message(refill_rule, p[5], 9, status=Status.DELIVERED, channel="line", refill_window=w1)
    _message(refill_rule, p[6], 10, status=Status.SENT, channel="line", refill_window=w2)

    # Consent: p0 and p1 granted SMS care; p1 withdrew on 3 March → 1 withdrawal of 2.
    with time_machine.travel(at(1), tick=False):
        grant(p[0], Purpose.CARE, Channel.SMS)
        grant(p[1], Purpose.CARE, Channel.SMS)
    with time_machine.travel(at(3), tick=False):
        withdraw(p[1], Purpose.CARE, Channel.SMS)
    return Clinic(visit_rule, recall_rule, refill_rule, p)
