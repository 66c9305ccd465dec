import datetime as dt
import threading

import pytest
import time_machine
from django.db import connection

from campaigns.models import Rule
from consent.models import Channel, Purpose
from patients.models import Appointment, ClinicProfile
from patients.services import prescription_sync_refills
from reminders.channels.base import ChannelError, OutcomeUnknown
from reminders.channels.memory import MemoryChannel
from reminders.models import Attempt, OutboxMessage, StaffTask, Status
from reminders.services import messages_dispatch, messages_recover
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    ProcedureFactory,
    grant,
    withdraw,
)
from tests.helpers import delete_by_hand, dispatch, only, plan, postgresql_only, taipei

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("memory_channels", "english")]


@pytest.fixture
def notice(clinic):
    """A patient with SMS care consent and a visit next week: one notice due today at 10:00."""
    only("回診通知")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    appointment = AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    return OutboxMessage.objects.get(appointment=appointment)


def test_due_message_is_sent_once(notice, memory_channels):
    dispatch(taipei(2026, 11, 24, 10, 1))
    dispatch(taipei(2026, 11, 24, 10, 2))

    assert [m.id for m in memory_channels] == [notice.uuid]
    assert memory_channels[0].to == notice.patient.phone
    notice.refresh_from_db()
    assert notice.status == Status.SENT
    assert notice.provider_id == f"memory-{notice.uuid}"
    assert notice.attempts_log.get().outcome == Attempt.Outcome.SENT


def test_nothing_goes_out_before_it_is_due(notice, memory_channels):
    dispatch(taipei(2026, 11, 24, 9, 59))

    assert memory_channels == []
    assert OutboxMessage.objects.get().status == Status.QUEUED


def test_a_message_due_at_night_waits_for_the_morning(notice, memory_channels):
    OutboxMessage.objects.update(next_attempt_at=taipei(2026, 11, 24, 21, 30))

    dispatch(taipei(2026, 11, 24, 21, 30))

    assert memory_channels == []
    notice.refresh_from_db()
    assert (notice.status, notice.next_attempt_at) == (Status.QUEUED, taipei(2026, 11, 25, 9, 0))


def test_closed_weekday_pushes_the_send_to_the_next_open_day(notice, clinic, memory_channels):
    clinic.closed_weekdays = [1, 2]  # Tuesday and Wednesday
    clinic.save()

    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert notice.next_attempt_at == taipei(2026, 11, 26, 9, 0)
    assert memory_channels == []


def test_withdrawal_after_planning_stops_the_send_at_once(notice, memory_channels):
    withdraw(notice.patient, Purpose.CARE, Channel.SMS)

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert memory_channels == []
    notice.refresh_from_db()
    assert notice.status == Status.DROPPED
    assert "withdrawn" in notice.error


def test_withdrawn_channel_falls_through_to_a_consented_one(notice, memory_channels):
    patient = notice.patient
    patient.line_user_id = "U" + "c" * 32
    patient.save()
    grant(patient, Purpose.CARE, Channel.EMAIL)
    withdraw(patient, Purpose.CARE, Channel.SMS)

    dispatch(taipei(2026, 11, 24, 10, 1))

    # LINE is next in the rule's order but has no consent; e-mail has.
    assert [(m.channel, m.to) for m in memory_channels] == [("email", patient.email)]
    assert memory_channels[0].subject == "回診通知"
    assert "<p>" in memory_channels[0].html_body


def test_cancelled_appointment_is_not_reminded(notice, memory_channels):
    Appointment.objects.update(status=Appointment.Status.CANCELLED)

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert memory_channels == []
    assert OutboxMessage.objects.get().error == "appointment cancelled"


@postgresql_only
def test_a_message_whose_appointment_was_deleted_by_hand_is_dropped(notice, memory_channels):
    # The outbox has no database key to the records a message is about (reminders.models):
    # an appointment deleted past the ORM, as the app's database role could, must stop the
    # send rather than crash dispatch.
    delete_by_hand("patients_appointment", notice.appointment_id)

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert memory_channels == []
    notice.refresh_from_db()
    assert (notice.status, notice.error) == (Status.DROPPED, "the record it is about was removed")


@postgresql_only
def test_a_post_op_message_whose_procedure_was_deleted_by_hand_is_dropped(clinic, memory_channels):
    # The post-op kind has no check of its own before sending: the gate's is the only one.
    only("術後當日衛教")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    procedure = ProcedureFactory(
        patient=patient,
        performed_at=taipei(2026, 11, 24, 9),
        discharged_at=taipei(2026, 11, 24, 15),
    )
    plan(taipei(2026, 11, 24, 15, 0))
    delete_by_hand("patients_procedure", procedure.pk)

    dispatch(taipei(2026, 11, 24, 15, 1))

    assert memory_channels == []
    message = OutboxMessage.objects.get()
    assert (message.status, message.error) == (Status.DROPPED, "the record it is about was removed")


def test_rescheduled_appointment_never_gets_the_old_time(notice, memory_channels):
    Appointment.objects.update(starts_at=taipei(2026, 12, 1, 16, 0))
    plan(taipei(2026, 11, 24, 9, 0))

    dispatch(taipei(2026, 11, 24, 10, 1))
    dispatch(taipei(2026, 11, 24, 10, 40))

    assert len(memory_channels) == 1
    assert "16:00" in memory_channels[0].body and "14:30" not in memory_channels[0].body
    notice.refresh_from_db()
    assert (notice.status, notice.error) == (Status.DROPPED, "appointment rescheduled")


def test_transient_errors_back_off_then_fail(notice, memory_channels):
    MemoryChannel.fail_next(ChannelError("HTTP 503", permanent=False), times=5)
    moment = taipei(2026, 11, 24, 10, 1)
    waits = []
    for _ in range(5):
        dispatch(moment)
        notice.refresh_from_db()
        waits.append(notice.next_attempt_at - moment)
        moment = notice.next_attempt_at

    assert waits[:4] == [dt.timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert (notice.status, notice.attempts) == (Status.FAILED, 5)
    assert memory_channels == []


def test_retry_after_from_the_provider_is_respected(notice):
    MemoryChannel.fail_next(ChannelError("HTTP 429", permanent=False, retry_after=600))

    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert notice.next_attempt_at == taipei(2026, 11, 24, 10, 11)


def test_permanent_error_falls_through_to_the_next_channel(notice, memory_channels):
    patient = notice.patient
    patient.line_user_id = "U" + "d" * 32
    patient.save()
    grant(patient, Purpose.CARE, Channel.LINE)
    MemoryChannel.fail_next(ChannelError("invalid number", permanent=True))

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert [m.channel for m in memory_channels] == ["line"]
    notice.refresh_from_db()
    assert (notice.channel, notice.status) == ("line", Status.SENT)
    outcomes = list(notice.attempts_log.values_list("channel", "outcome"))
    assert outcomes == [("sms", "permanent"), ("line", "sent")]


def test_unknown_outcome_is_never_sent_again_and_asks_staff(notice, memory_channels):
    MemoryChannel.fail_next(OutcomeUnknown("read timeout"))

    dispatch(taipei(2026, 11, 24, 10, 1))
    dispatch(taipei(2026, 11, 24, 11, 0))

    assert memory_channels == []
    notice.refresh_from_db()
    assert notice.status == Status.UNKNOWN
    assert StaffTask.objects.get().kind == StaffTask.Kind.REVIEW_UNKNOWN


def test_stale_dose_reminder_is_dropped_not_sent_late(clinic, memory_channels):
    only("用藥提醒")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    PrescriptionFactory(
        patient=patient,
        dose_times=["12:00"],
        start_date=dt.date(2026, 11, 24),
        days_supplied=3,
        dose_reminders=True,
    )
    plan(taipei(2026, 11, 24, 9, 0))

    dispatch(taipei(2026, 11, 24, 12, 5))  # the worker was down at 11:45

    assert memory_channels == []
    assert OutboxMessage.objects.get().status == Status.DROPPED


def test_a_patient_gets_one_message_at_a_time_most_important_first(clinic, memory_channels):
    Rule.objects.exclude(name__startswith="回診通知").exclude(name__startswith="生日祝福").update(
        enabled=False
    )
    patient = PatientFactory(birth_date=dt.date(1960, 11, 24))
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))

    dispatch(taipei(2026, 11, 24, 10, 0))
    assert ["回診" in m.body for m in memory_channels] == [True]

    dispatch(taipei(2026, 11, 24, 10, 10))
    assert len(memory_channels) == 1

    dispatch(taipei(2026, 11, 24, 10, 30))
    assert ["生日快樂" in m.body for m in memory_channels] == [False, True]


def test_claim_with_no_attempt_is_requeued_after_a_crash(notice, memory_channels):
    OutboxMessage.objects.update(status=Status.SENDING, claimed_at=taipei(2026, 11, 24, 10, 0))

    dispatch(taipei(2026, 11, 24, 10, 10))

    assert [m.id for m in memory_channels] == [notice.uuid]


def test_sms_whose_sender_died_mid_send_becomes_unknown_not_resent(notice, memory_channels):
    OutboxMessage.objects.update(status=Status.SENDING, claimed_at=taipei(2026, 11, 24, 10, 0))
    Attempt.objects.create(message=notice, channel="sms", started_at=taipei(2026, 11, 24, 10, 0))

    dispatch(taipei(2026, 11, 24, 10, 10))

    assert memory_channels == []
    notice.refresh_from_db()
    assert notice.status == Status.UNKNOWN


def test_line_message_whose_sender_died_is_resent_with_the_same_retry_key(
    clinic, fake_line, settings
):
    only("回診通知")
    patient = PatientFactory(line_user_id="U" + "e" * 32, preferred_channel="line")
    grant(patient, Purpose.CARE, Channel.LINE)
    AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    message = OutboxMessage.objects.get()
    # The first push reached LINE, then the worker died before recording it.
    dispatch(taipei(2026, 11, 24, 10, 1))
    OutboxMessage.objects.update(status=Status.SENDING, claimed_at=taipei(2026, 11, 24, 10, 1))
    Attempt.objects.update(outcome=Attempt.Outcome.STARTED)

    dispatch(taipei(2026, 11, 24, 10, 10))

    message.refresh_from_db()
    assert message.status == Status.SENT
    keys = [r.header("X-Line-Retry-Key") for r in fake_line.requests]
    assert keys == [str(message.uuid)] * 2
    assert len(fake_line.delivered) == 1


def test_sms_through_the_real_twilio_sdk(notice, fake_twilio):
    dispatch(taipei(2026, 11, 24, 10, 1))

    notice.refresh_from_db()
    assert notice.status == Status.SENT
    assert notice.provider_id.startswith("SM")
    assert fake_twilio.requests[0].form["To"] == [notice.patient.phone]


def test_recover_leaves_live_claims_alone(notice):
    OutboxMessage.objects.update(status=Status.SENDING, claimed_at=taipei(2026, 11, 24, 10, 0))

    with time_machine.travel(taipei(2026, 11, 24, 10, 2), tick=False):
        result = messages_recover(now=taipei(2026, 11, 24, 10, 2))

    assert not result
    assert OutboxMessage.objects.get().status == Status.SENDING


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs concurrent connections")
def test_two_dispatchers_at_once_send_each_message_once(memory_channels):
    ClinicProfile.load()
    only("回診通知")
    for _ in range(40):
        patient = PatientFactory()
        grant(patient, Purpose.CARE, Channel.SMS)
        AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))

    def worker():
        messages_dispatch(batch_size=5, time_budget=10)
        connection.close()

    with time_machine.travel(taipei(2026, 11, 24, 10, 1), tick=False):
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    sent = [m.id for m in memory_channels]
    assert len(sent) == len(set(sent)) == 40
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.SENT}


def test_recovery_leaves_a_claim_its_sender_renewed(notice, settings):
    from reminders.services import _renew_claim, messages_claim

    settings.DISPATCH_CLAIM_LEASE_SECONDS = 60
    [claimed] = messages_claim(now=taipei(2026, 11, 24, 10, 0), limit=5)
    # The sender is slow but alive: it renews just before sending.
    assert _renew_claim(claimed, taipei(2026, 11, 24, 10, 2))

    with time_machine.travel(taipei(2026, 11, 24, 10, 2, 30), tick=False):
        result = messages_recover(now=taipei(2026, 11, 24, 10, 2, 30))

    assert not result
    assert OutboxMessage.objects.get().status == Status.SENDING


def test_a_sender_slower_than_the_lease_does_not_send_what_recovery_took_back(
    notice, settings, memory_channels
):
    from reminders.services import _renew_claim, messages_claim

    settings.DISPATCH_CLAIM_LEASE_SECONDS = 60
    [claimed] = messages_claim(now=taipei(2026, 11, 24, 10, 0), limit=5)
    with time_machine.travel(taipei(2026, 11, 24, 10, 5), tick=False):
        assert messages_recover(now=taipei(2026, 11, 24, 10, 5)) == {"requeued": 1}

    assert not _renew_claim(claimed, taipei(2026, 11, 24, 10, 5, 1))
    dispatch(taipei(2026, 11, 24, 10, 6))
    assert [m.id for m in memory_channels] == [notice.uuid]


def test_switching_a_rule_off_stops_its_queued_messages(notice, memory_channels):
    Rule.objects.filter(pk=notice.rule_id).update(enabled=False)

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert memory_channels == []
    notice.refresh_from_db()
    assert (notice.status, notice.error) == (Status.DROPPED, "rule switched off")


def test_an_unexpected_error_on_one_message_does_not_stop_the_others(
    clinic, memory_channels, monkeypatch
):
    only("回診通知")
    for _ in range(2):
        patient = PatientFactory()
        grant(patient, Purpose.CARE, Channel.SMS)
        AppointmentFactory(patient=patient, starts_at=taipei(2026, 12, 1, 14, 30))
    plan(taipei(2026, 11, 24, 8, 0))
    first = OutboxMessage.objects.order_by("id").first()
    real_send = MemoryChannel.send

    def send(self, message):
        if message.id == first.uuid:
            raise RuntimeError("a bug")
        return real_send(self, message)

    monkeypatch.setattr(MemoryChannel, "send", send)

    result = dispatch(taipei(2026, 11, 24, 10, 1))

    assert result["error"] == 1 and result[Status.SENT] == 1
    first.refresh_from_db()
    assert first.status == Status.SENDING  # left for recovery, which will call it unknown


@pytest.fixture
def refill_opening(clinic):
    """A refill window opening today (Nov 19), its reminder planned for 10:00."""
    only("慢箋可領藥")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    prescription = PrescriptionFactory(
        patient=patient, start_date=dt.date(2026, 11, 1), days_supplied=28, refills=2
    )
    prescription_sync_refills(prescription=prescription)
    plan(taipei(2026, 11, 19, 8, 0))
    return OutboxMessage.objects.get()


def test_refill_reminder_whose_window_moved_is_dropped_not_sent_with_old_dates(
    refill_opening, memory_channels
):
    prescription = refill_opening.prescription
    prescription.start_date = dt.date(2026, 11, 3)  # the front desk corrects the start date
    prescription.save()
    prescription_sync_refills(prescription=prescription)

    dispatch(taipei(2026, 11, 19, 10, 1))

    assert memory_channels == []
    refill_opening.refresh_from_db()
    assert (refill_opening.status, refill_opening.error) == (
        Status.DROPPED,
        "refill window changed",
    )


def test_fewer_refills_after_a_reminder_was_queued_drops_it_instead_of_failing(
    refill_opening, memory_channels
):
    prescription = refill_opening.prescription
    prescription.refills = 0
    prescription.save()
    prescription_sync_refills(prescription=prescription)  # used to raise ProtectedError

    dispatch(taipei(2026, 11, 19, 10, 1))

    assert memory_channels == []
    refill_opening.refresh_from_db()
    assert refill_opening.error == "refill window removed"


def test_refill_reminder_goes_out_when_nothing_changed(refill_opening, memory_channels):
    dispatch(taipei(2026, 11, 19, 10, 1))

    assert [m.id for m in memory_channels] == [refill_opening.uuid]


def test_dose_reminder_for_a_dose_time_the_doctor_changed_is_dropped(clinic, memory_channels):
    only("用藥提醒")
    patient = PatientFactory()
    grant(patient, Purpose.CARE, Channel.SMS)
    prescription = PrescriptionFactory(
        patient=patient,
        dose_times=["12:00"],
        start_date=dt.date(2026, 11, 24),
        days_supplied=3,
        dose_reminders=True,
    )
    plan(taipei(2026, 11, 24, 9, 0))
    prescription.dose_times = ["13:00"]
    prescription.save()

    dispatch(taipei(2026, 11, 24, 11, 46))

    assert memory_channels == []
    assert OutboxMessage.objects.get(occurrence_key__contains="T12:00").error == "dose time changed"


def test_an_appointment_reminder_without_its_appointment_is_dropped_not_crashed(
    notice, memory_channels
):
    OutboxMessage.objects.filter(pk=notice.pk).update(appointment=None)

    dispatch(taipei(2026, 11, 24, 10, 1))

    assert memory_channels == []
    notice.refresh_from_db()
    assert (notice.status, notice.error) == (Status.DROPPED, "appointment removed")
