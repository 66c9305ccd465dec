"""The daily call tasks for patients no channel can remind, and the next open day."""

import datetime as dt

import pytest

from consent.models import Channel
from desk.task_services import next_open_day, tasks_plan_no_channel
from patients.models import Appointment
from reminders.models import StaffTask
from tests.factories import AppointmentFactory, PatientFactory, grant
from tests.helpers import MEMORY, taipei

pytestmark = pytest.mark.django_db

NOW = taipei(2026, 12, 3, 8, 0)  # a Thursday morning
TOMORROW_MORNING = taipei(2026, 12, 4, 9, 30)


@pytest.fixture
def sms_only(settings):
    """SMS is the only channel configured here (LINE and e-mail are off)."""
    from reminders.channels.base import _load

    settings.REMINDER_CHANNELS = {"sms": MEMORY}
    _load.cache_clear()
    yield
    _load.cache_clear()


def _appointment(patient=None, *, at=TOMORROW_MORNING, **kwargs):
    return AppointmentFactory(patient=patient or PatientFactory(), starts_at=at, **kwargs)


def _no_channel_tasks():
    return StaffTask.objects.filter(kind=StaffTask.Kind.CALL_NO_CHANNEL)


def test_patient_without_consent_and_an_appointment_tomorrow_gets_a_call_task(sms_only):
    # given a patient who never consented to care messages, booked for tomorrow morning
    appointment = _appointment()

    # when the service runs
    created = tasks_plan_no_channel(now=NOW)

    # then there is one call task about that appointment, due today, until the visit day
    assert created == 1
    task = _no_channel_tasks().get()
    assert task.appointment_id == appointment.pk
    assert task.patient_id == appointment.patient_id
    assert (task.due_on, task.until) == (dt.date(2026, 12, 3), dt.date(2026, 12, 4))
    assert task.done_at is None


def test_patient_reachable_by_sms_gets_no_call_task(sms_only):
    patient = PatientFactory(phone="+886912000111")
    grant(patient, channel=Channel.SMS)
    _appointment(patient)

    assert tasks_plan_no_channel(now=NOW) == 0
    assert not _no_channel_tasks().exists()


def test_consent_only_on_a_channel_that_is_off_here_still_needs_a_call(sms_only):
    # given consent and an address for e-mail only, and e-mail is not configured
    patient = PatientFactory(email="lin@example.test")
    grant(patient, channel=Channel.EMAIL)
    _appointment(patient)

    tasks_plan_no_channel(now=NOW)

    assert _no_channel_tasks().filter(patient=patient).count() == 1


def test_consent_without_an_address_still_needs_a_call(sms_only):
    # a landline is kept for calls, never texted: SMS consent alone reaches nobody
    patient = PatientFactory(phone="+886223456789")
    grant(patient, channel=Channel.SMS)
    _appointment(patient)

    tasks_plan_no_channel(now=NOW)

    assert _no_channel_tasks().filter(patient=patient).count() == 1


def test_appointments_later_past_or_cancelled_get_no_call_task(sms_only):
    _appointment(at=taipei(2026, 12, 6, 9, 0))  # three days ahead: the reminders' turn first
    _appointment(at=taipei(2026, 12, 3, 7, 30))  # this morning, already begun
    _appointment(status=Appointment.Status.CANCELLED)
    in_window = _appointment(at=taipei(2026, 12, 5, 23, 30))  # the day after tomorrow, late

    tasks_plan_no_channel(now=NOW)

    assert list(_no_channel_tasks().values_list("appointment_id", flat=True)) == [in_window.pk]


def test_running_again_adds_nothing_and_never_reopens_a_closed_task(sms_only):
    _appointment()
    tasks_plan_no_channel(now=NOW)
    _no_channel_tasks().update(done_at=NOW)

    again = tasks_plan_no_channel(now=NOW + dt.timedelta(hours=1))

    assert again == 0
    assert _no_channel_tasks().count() == 1
    assert _no_channel_tasks().get().done_at is not None


def test_the_service_is_set_based_whatever_the_number_of_appointments(
    sms_only, django_assert_max_num_queries
):
    # given forty unreachable patients booked tomorrow, and ten reachable ones
    for _ in range(40):
        _appointment()
    for n in range(10):
        patient = PatientFactory(phone=f"+88691200{n:04d}")
        grant(patient, channel=Channel.SMS)
        _appointment(patient)

    # when it runs, it asks the database a fixed handful of times, not once per appointment
    with django_assert_max_num_queries(3):
        created = tasks_plan_no_channel(now=NOW)

    assert created == 40
    assert _no_channel_tasks().count() == 40


def test_with_no_channel_configured_every_patient_with_a_visit_soon_needs_a_call(settings):
    from reminders.channels.base import _load

    settings.REMINDER_CHANNELS = {}
    _load.cache_clear()
    patient = PatientFactory(phone="+886912000222")
    grant(patient, channel=Channel.SMS)
    _appointment(patient)

    tasks_plan_no_channel(now=NOW)

    assert _no_channel_tasks().filter(patient=patient).count() == 1
    _load.cache_clear()


def test_next_open_day_skips_the_closed_weekend(clinic):
    clinic.closed_weekdays = [5, 6]  # Saturday and Sunday
    clinic.save()

    assert next_open_day(after=dt.date(2026, 12, 4), profile=clinic) == dt.date(2026, 12, 7)
    assert next_open_day(after=dt.date(2026, 12, 3), profile=clinic) == dt.date(2026, 12, 4)


def test_the_worker_task_plans_the_call_tasks(sms_only):
    import time_machine

    from reminders.tasks import no_channel_task

    _appointment()
    with time_machine.travel(NOW, tick=False):
        assert no_channel_task() == 1


def test_setup_schedules_installs_the_call_task_schedule():
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("setup_schedules", stdout=open("/dev/null", "w"))  # noqa: SIM115

    schedule = Schedule.objects.get(func="reminders.tasks.no_channel_task")
    assert schedule.minutes == 60 and schedule.repeats == -1
