"""Closure dates and make-up workdays, through the planner and the send gate."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns.models import Skip, SkipReason
from consent.models import Channel, Purpose
from patients.models import ClinicDay
from patients.selectors import closure_on, closures_between
from reminders.models import OutboxMessage, Status
from tests.factories import AppointmentFactory, PatientFactory, grant
from tests.helpers import dispatch, only, plan, taipei, text_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("memory_channels")]

SATURDAY, SUNDAY = 5, 6


def closed(day: dt.date, kind=ClinicDay.Kind.HOLIDAY, note="") -> ClinicDay:
    return ClinicDay.objects.create(date=day, kind=kind, note=note)


def makeup_workday(day: dt.date) -> ClinicDay:
    return ClinicDay.objects.create(date=day, kind=ClinicDay.Kind.WORKDAY, note="補行上班")


@pytest.fixture
def thursday_visit(clinic):
    """A booked visit on Thursday Dec 10, 2026 at 10:00; SMS care consent; confirmations on."""
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    return AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 10, 10, 0))


def test_confirmation_goes_out_on_the_last_open_day_when_the_day_before_is_a_holiday(
    thursday_visit,
):
    closed(dt.date(2026, 12, 9), note="補假")  # the Wednesday before the visit

    plan(taipei(2026, 12, 8, 8, 0))  # Tuesday
    plan(taipei(2026, 12, 9, 8, 0))  # the holiday itself: nothing more

    message = OutboxMessage.objects.get()
    assert message.appointment == thursday_visit
    assert message.due_at == taipei(2026, 12, 8, 10, 0)
    assert message.expires_at == taipei(2026, 12, 10, 0, 0)
    text = text_of(message).body
    assert "12月10日（四）" in text and "明天" not in text
    assert not Skip.objects.exists()


def test_confirmation_waits_for_the_day_before_when_no_closure_is_recorded(thursday_visit):
    plan(taipei(2026, 12, 8, 8, 0))

    assert not OutboxMessage.objects.exists()


def test_confirmation_skips_back_over_a_lunar_new_year_longer_than_a_week(clinic):
    # 2027: 春節 closes the clinic from Thu Feb 4 to Sun Feb 14 (11 days).
    for offset in range(11):
        closed(dt.date(2027, 2, 4) + dt.timedelta(days=offset), note="春節")
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2027, 2, 15, 9, 30))

    plan(taipei(2027, 2, 3, 8, 0))  # Wednesday, the last open day

    assert OutboxMessage.objects.get().due_at == taipei(2027, 2, 3, 10, 0)


def test_a_makeup_saturday_sends_on_a_clinic_closed_on_saturdays(clinic):
    clinic.closed_weekdays = [SATURDAY, SUNDAY]
    clinic.save()
    makeup_workday(dt.date(2026, 12, 5))  # a Saturday
    only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 12, 5))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 12, 5, 8, 0))
    dispatch(taipei(2026, 12, 5, 10, 1))

    message = OutboxMessage.objects.get()
    assert message.due_at == taipei(2026, 12, 5, 10, 0)
    assert message.status == Status.SENT
    assert not Skip.objects.exists()


def test_a_makeup_saturday_is_the_last_open_day_before_a_monday_visit(clinic):
    clinic.closed_weekdays = [SATURDAY, SUNDAY]
    clinic.save()
    closed(dt.date(2026, 12, 4))  # Friday: a holiday
    makeup_workday(dt.date(2026, 12, 5))  # Saturday: worked instead
    only("回診確認")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 7, 10, 0))

    plan(taipei(2026, 12, 4, 8, 0))
    assert not OutboxMessage.objects.exists()
    plan(taipei(2026, 12, 5, 8, 0))

    assert OutboxMessage.objects.get().due_at == taipei(2026, 12, 5, 10, 0)


@pytest.fixture
def notice(clinic):
    """A visit notice queued on Tuesday Nov 24, 2026, due at 10:00."""
    only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    return OutboxMessage.objects.get()


def test_a_midweek_holiday_delays_a_queued_message_to_the_next_open_day(notice, memory_channels):
    # Recorded after planning, as a typhoon day is: the gate still holds the message back.
    closed(dt.date(2026, 11, 24), kind=ClinicDay.Kind.TYPHOON, note="颱風假")
    closed(dt.date(2026, 11, 25))

    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert memory_channels == []
    assert (notice.status, notice.next_attempt_at) == (Status.QUEUED, taipei(2026, 11, 26, 9, 0))

    dispatch(taipei(2026, 11, 26, 9, 1))

    notice.refresh_from_db()
    assert notice.status == Status.SENT


def test_a_birthday_on_a_closure_date_is_skipped_as_stale(clinic):
    closed(dt.date(2026, 11, 24), note="院長請假")
    rule = only("生日祝福")
    patient = PatientFactory(birth_date=dt.date(1970, 11, 24))
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)

    plan(taipei(2026, 11, 24, 8, 0))

    assert not OutboxMessage.objects.exists()
    assert Skip.objects.get(patient=patient, rule=rule).reason == SkipReason.STALE


def test_the_closure_calendar_is_read_once_per_dispatch_batch_not_per_message(clinic):
    only("回診通知")
    for _ in range(5):
        patient = PatientFactory()
        grant(patient, Purpose.CARE, Channel.SMS)
        AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    closed(dt.date(2026, 11, 24))

    with CaptureQueriesContext(connection) as queries:
        dispatch(taipei(2026, 11, 24, 10, 1))

    calendar_reads = [q for q in queries.captured_queries if "patients_clinicday" in q["sql"]]
    assert len(calendar_reads) == 1
    assert set(OutboxMessage.objects.values_list("next_attempt_at", flat=True)) == {
        taipei(2026, 11, 25, 9, 0)
    }


def test_closure_on_names_the_closure_and_ignores_makeup_days():
    typhoon = closed(dt.date(2026, 8, 3), kind=ClinicDay.Kind.TYPHOON, note="颱風假")
    makeup_workday(dt.date(2026, 8, 8))

    assert closure_on(dt.date(2026, 8, 3)) == typhoon
    assert closure_on(dt.date(2026, 8, 8)) is None
    assert closure_on(dt.date(2026, 8, 4)) is None
    assert closures_between(dt.date(2026, 8, 1), dt.date(2026, 8, 31)) == {
        dt.date(2026, 8, 3): typhoon
    }


def test_only_a_makeup_workday_opens_the_clinic():
    workday = makeup_workday(dt.date(2027, 2, 20))
    holiday = closed(dt.date(2027, 2, 28), note="和平紀念日")

    assert (workday.open, holiday.open) == (True, False)
