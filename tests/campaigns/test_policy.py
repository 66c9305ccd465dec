"""The send policy: its two faces agree (issue 7.16), messages naming a day before a visit go
out on an open day before it (7.1), and a plan for a given time renders from that time (7.6)."""

import datetime as dt

import pytest
import time_machine
from django.utils import translation

from campaigns.kinds import KINDS
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.planner import due_set, plan_due_messages
from campaigns.policy import Action, plan_decision, send_decision
from campaigns.templating import allowed_fields
from consent.models import Channel, Purpose
from patients.models import Appointment
from patients.services import patient_erase
from reminders.models import OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory, ProcedureFactory, grant, withdraw
from tests.helpers import MEMORY, dispatch, only, plan, taipei, text_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("memory_channels")]
SUNDAY = 6


# --- 16: one policy, two faces ---------------------------------------------------------------


def _gate_code(verdict) -> SkipReason | None:
    if verdict.action == Action.SEND:
        return None
    assert verdict.code is not None, verdict
    return verdict.code


def _planner_answers(rule, now, profile):
    rows, selection = due_set(rule, now=now, profile=profile)
    expand = selection.expand
    return {
        due.row["pid"]: plan_decision(rule=rule, due=due, now=now, profile=profile).skip
        for row in rows
        for due in expand(row)
    }


def _gate_answers(rule, now, profile, patients, *, with_appointment=False):
    answers = {}
    for patient in patients:
        appointment = Appointment.objects.get(patient=patient) if with_appointment else None
        message = OutboxMessage.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key="policy-test",
            purpose=rule.purpose,
            channel=rule.channel_order[0],
            due_at=now,
            next_attempt_at=now,
            expires_at=now + dt.timedelta(hours=8),
            body="text",
            appointment=appointment,
            anchor_at=appointment.starts_at if appointment else None,
        )
        message = OutboxMessage.objects.select_related("patient", "rule", "appointment").get(
            pk=message.pk
        )
        answers[patient.pk] = _gate_code(send_decision(message=message, now=now, profile=profile))
    return answers


def test_planner_and_gate_give_the_same_answer_for_birthdays(clinic, settings):
    # given one patient for each answer the policy can give a relationship message
    settings.RELATIONSHIP_MESSAGES_PER_30_DAYS = 2
    rule = only("生日祝福")
    rule.channel_order = ["sms"]
    rule.save()
    now = taipei(2026, 11, 24, 10, 0)
    born = dt.date(1960, 11, 24)
    consented = PatientFactory(birth_date=born)
    grant(consented, Purpose.RELATIONSHIP, Channel.SMS)
    no_consent = PatientFactory(birth_date=born)
    withdrawn = PatientFactory(birth_date=born)
    grant(withdrawn, Purpose.RELATIONSHIP, Channel.SMS)
    withdraw(withdrawn, Purpose.RELATIONSHIP, Channel.SMS)
    no_phone = PatientFactory(birth_date=born, phone="")
    grant(no_phone, Purpose.RELATIONSHIP, Channel.SMS)
    erased = PatientFactory(birth_date=born)
    grant(erased, Purpose.RELATIONSHIP, Channel.SMS)
    patient_erase(patient=erased, actor=None)
    capped = PatientFactory(birth_date=born)
    grant(capped, Purpose.RELATIONSHIP, Channel.SMS)
    for days_ago, status in ((3, Status.SENT), (20, Status.DELIVERED)):
        OutboxMessage.objects.create(
            rule=rule,
            patient=capped,
            occurrence_key=f"earlier-{days_ago}",
            purpose=Purpose.RELATIONSHIP,
            channel="sms",
            status=status,
            due_at=now - dt.timedelta(days=days_ago),
            next_attempt_at=now - dt.timedelta(days=days_ago),
            sent_at=now - dt.timedelta(days=days_ago),
            expires_at=now,
            body="earlier",
        )
    an_old_one = PatientFactory(birth_date=born)  # its earlier messages are outside 30 days
    grant(an_old_one, Purpose.RELATIONSHIP, Channel.SMS)
    for days_ago in (31, 40):
        OutboxMessage.objects.create(
            rule=rule,
            patient=an_old_one,
            occurrence_key=f"earlier-{days_ago}",
            purpose=Purpose.RELATIONSHIP,
            channel="sms",
            status=Status.SENT,
            due_at=now - dt.timedelta(days=days_ago),
            next_attempt_at=now - dt.timedelta(days=days_ago),
            sent_at=now - dt.timedelta(days=days_ago),
            expires_at=now,
            body="earlier",
        )
    patients = [consented, no_consent, withdrawn, no_phone, erased, capped, an_old_one]

    # when both faces are asked at the same moment
    planned = _planner_answers(rule, now, clinic)
    gated = _gate_answers(rule, now, clinic, patients)

    # then they agree, and each case gets the answer it should
    assert planned == gated
    assert planned == {
        consented.pk: None,
        no_consent.pk: SkipReason.NO_CONSENT,
        withdrawn.pk: SkipReason.WITHDRAWN,
        no_phone.pk: SkipReason.NO_CONTACT_POINT,
        erased.pk: SkipReason.ERASED,
        capped.pk: SkipReason.FREQUENCY_CAP,
        an_old_one.pk: None,
    }


def test_planner_and_gate_give_the_same_answer_for_confirmations(clinic, settings):
    rule = only("回診確認")
    rule.channel_order = ["sms"]
    rule.save()
    now = taipei(2026, 11, 24, 10, 0)
    visit = taipei(2026, 11, 25, 14, 30)
    booked = PatientFactory()
    confirmed = PatientFactory()
    off_channel = PatientFactory()
    for patient in (booked, confirmed, off_channel):
        grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=booked, starts_at=visit)
    AppointmentFactory(patient=confirmed, starts_at=visit, status=Appointment.Status.CONFIRMED)
    AppointmentFactory(patient=off_channel, starts_at=visit)

    planned = _planner_answers(rule, now, clinic)
    gated = _gate_answers(rule, now, clinic, [booked, confirmed], with_appointment=True)
    settings.REMINDER_CHANNELS = {"email": MEMORY}
    planned_off = _planner_answers(rule, now, clinic)[off_channel.pk]
    gated_off = _gate_answers(rule, now, clinic, [off_channel], with_appointment=True)
    gated_off = gated_off[off_channel.pk]

    assert (
        {k: planned[k] for k in gated}
        == gated
        == {
            booked.pk: None,
            confirmed.pk: SkipReason.ALREADY_CONFIRMED,
        }
    )
    assert planned_off == gated_off == SkipReason.CHANNEL_NOT_CONFIGURED


# --- 17: a kind is declared once -------------------------------------------------------------


def test_every_rule_kind_is_declared_once_with_its_template_fields():
    assert set(KINDS) == set(RuleKind.values)
    for kind, spec in KINDS.items():
        fields = allowed_fields(kind)
        for root, names in spec.template_fields.items():
            assert set(names) <= set(fields[root])


# --- 1: a message naming a day before the visit goes out on an open day before it ----------


@pytest.fixture
def sunday_closed(clinic):
    clinic.closed_weekdays = [SUNDAY]
    clinic.save()
    return clinic


@pytest.fixture
def monday_visit(sunday_closed):
    """A booked visit on Monday Dec 7, 10:00, for a patient with SMS care consent."""
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    return AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 7, 10, 0))


def test_confirmation_for_a_monday_visit_goes_out_on_saturday_when_sunday_is_closed(monday_visit):
    plan(taipei(2026, 12, 5, 8, 0))  # Saturday
    plan(taipei(2026, 12, 6, 8, 0))  # Sunday: nothing new
    plan(taipei(2026, 12, 7, 8, 0))  # Monday: nothing either

    message = OutboxMessage.objects.get()
    assert message.due_at == taipei(2026, 12, 5, 10, 0)
    assert message.expires_at == taipei(2026, 12, 7, 0, 0)  # never on the visit day
    text = text_of(message).body
    assert "12月7日（一）" in text and "明天" not in text
    assert not Skip.objects.exists()


def test_confirmation_skips_back_over_a_long_weekend(monday_visit, sunday_closed):
    sunday_closed.closed_weekdays = [5, SUNDAY]
    sunday_closed.save()

    plan(taipei(2026, 12, 4, 8, 0))  # Friday

    assert OutboxMessage.objects.get().due_at == taipei(2026, 12, 4, 10, 0)


def test_confirmation_still_goes_out_the_day_before_when_that_day_is_open(clinic):
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 7, 10, 0))

    plan(taipei(2026, 12, 5, 8, 0))
    assert not OutboxMessage.objects.exists()
    plan(taipei(2026, 12, 6, 8, 0))

    assert OutboxMessage.objects.get().due_at == taipei(2026, 12, 6, 10, 0)


def test_a_visit_booked_on_the_closed_day_before_it_is_skipped_with_a_reason(monday_visit):
    plan(taipei(2026, 12, 6, 8, 0))  # planned first on the closed Sunday

    assert not OutboxMessage.objects.exists()
    skip = Skip.objects.get()
    assert (skip.patient, skip.reason) == (monday_visit.patient, SkipReason.NO_OPEN_DAY)
    with translation.override("zh-hant"):
        assert skip.get_reason_display() == "回診前已沒有營業日可以發送"


def test_a_confirmation_planned_too_late_in_the_evening_is_skipped_not_sent_on_the_day(
    clinic,
):
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 4, 10, 0))

    plan(taipei(2026, 12, 3, 21, 30))  # after the send window of the day before

    assert not OutboxMessage.objects.exists()
    assert Skip.objects.get().reason == SkipReason.STALE


def test_a_confirmation_not_sent_by_the_eve_is_dropped_not_sent_on_the_visit_day(monday_visit):
    plan(taipei(2026, 12, 5, 8, 0))
    moment = taipei(2026, 12, 7, 9, 0)  # the worker was down all weekend

    dispatch(moment)

    assert OutboxMessage.objects.get().status == Status.DROPPED


# --- 6: now means now ------------------------------------------------------------------------


def test_a_plan_for_a_given_time_renders_ages_and_days_from_that_time(clinic):
    only("術後關懷")
    rule = Rule.objects.get(name__startswith="術後關懷")
    MessageTemplate.objects.filter(rule=rule, channel="sms", language="zh-hant").update(
        body="{{ patient.display_name }} {{ patient.age }} 歲，術後第 {{ procedure.days_since }} 天"
    )
    patient = PatientFactory(birth_date=dt.date(1960, 11, 25))
    grant(patient, Purpose.CARE, Channel.SMS)
    ProcedureFactory(
        patient=patient,
        performed_at=taipei(2026, 11, 23, 9, 0),
        discharged_at=taipei(2026, 11, 23, 15, 0),
    )

    # The wall clock is a year later; the plan is for Nov 24, 2026 (day 1, aged 65).
    with time_machine.travel(taipei(2027, 12, 1, 12, 0), tick=False):
        plan_due_messages(now=taipei(2026, 11, 24, 8, 0))

    assert text_of(OutboxMessage.objects.get()).body.endswith("65 歲，術後第 1 天")
