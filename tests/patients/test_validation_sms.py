"""The send path never texts a landline, even one entered after the message was planned."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import time_machine

from campaigns.models import Rule
from campaigns.planner import plan_due_messages
from consent.models import Channel, Purpose
from reminders.channels import memory
from reminders.channels.base import _load
from reminders.channels.memory import MemoryChannel
from reminders.models import OutboxMessage, Status
from reminders.services import messages_dispatch
from tests.factories import AppointmentFactory, PatientFactory, grant

pytestmark = pytest.mark.django_db
TPE = ZoneInfo("Asia/Taipei")
MEMORY = "reminders.channels.memory.MemoryChannel"


@pytest.fixture(autouse=True)
def memory_channels(settings):
    settings.REMINDER_CHANNELS = {"sms": MEMORY, "line": MEMORY, "email": MEMORY}
    settings.CHANNEL_RATE_LIMITS = {}
    _load.cache_clear()
    MemoryChannel.reset()
    yield memory.outbox
    MemoryChannel.reset()
    _load.cache_clear()


def at(moment, fn, **kwargs):
    with time_machine.travel(moment, tick=False):
        return fn(**kwargs)


@pytest.fixture
def queued_sms(clinic):
    """A return-visit notice queued by SMS to a patient's mobile, due today at 10:00."""
    Rule.objects.exclude(name__startswith="回診通知").update(enabled=False)
    patient = PatientFactory(phone="0912-345-678")
    grant(patient, Purpose.CARE, Channel.SMS)
    AppointmentFactory(patient=patient, starts_at=dt.datetime(2026, 12, 1, 14, 30, tzinfo=TPE))
    moment = dt.datetime(2026, 11, 24, 8, 0, tzinfo=TPE)
    at(moment, plan_due_messages, now=moment)
    message = OutboxMessage.objects.get(patient=patient)
    assert message.channel == Channel.SMS
    return message


def test_a_message_queued_for_a_mobile_is_not_texted_once_the_phone_is_a_landline(
    queued_sms, memory_channels
):
    # given: the front desk corrects the number to the patient's home phone
    patient = queued_sms.patient
    patient.phone = "02-2345-6789"
    patient.save()

    # when
    at(dt.datetime(2026, 11, 24, 10, 1, tzinfo=TPE), messages_dispatch, time_budget=5)

    # then: nothing went out by SMS, and the message did not end as sent
    assert [m for m in memory_channels if m.channel == Channel.SMS] == []
    queued_sms.refresh_from_db()
    assert queued_sms.status not in (Status.SENT, Status.DELIVERED, Status.UNKNOWN)


def test_the_same_message_to_the_mobile_is_texted(queued_sms, memory_channels):
    at(dt.datetime(2026, 11, 24, 10, 1, tzinfo=TPE), messages_dispatch, time_budget=5)

    assert [m.channel for m in memory_channels] == [Channel.SMS]
