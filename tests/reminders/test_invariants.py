"""Properties that must hold whatever the consent history: a message only goes out on a
channel and for a purpose the patient consents to at that moment, and never twice."""

import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Rule
from campaigns.planner import plan_due_messages
from consent.models import Channel, Purpose
from consent.selectors import may_contact
from reminders.channels import memory
from reminders.channels.base import ChannelError
from reminders.channels.memory import MemoryChannel
from reminders.models import OutboxMessage
from reminders.services import messages_dispatch
from tests.factories import AppointmentFactory, PatientFactory, grant, withdraw

pytestmark = pytest.mark.django_db
TPE = ZoneInfo("Asia/Taipei")
PAIRS = [(purpose, channel) for purpose in Purpose for channel in Channel]

consent_changes = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(PAIRS), st.booleans()), max_size=10
)


@pytest.fixture(autouse=True)
def memory_channels(settings):
    from reminders.channels.base import _load

    memory_path = "reminders.channels.memory.MemoryChannel"
    settings.REMINDER_CHANNELS = {"sms": memory_path, "line": memory_path, "email": memory_path}
    settings.CHANNEL_RATE_LIMITS = {}
    settings.MESSAGE_GAP_MINUTES = 0
    _load.cache_clear()
    yield
    MemoryChannel.reset()


def apply(patients, changes):
    for index, (purpose, channel), granted in changes:
        (grant if granted else withdraw)(patients[index], purpose, channel)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    before=consent_changes,
    between=consent_changes,
    failures=st.lists(st.booleans(), max_size=4),
)
def test_no_message_without_consent_at_send_time_and_none_twice(clinic, before, between, failures):
    with transaction.atomic():
        MemoryChannel.reset()
        Rule.objects.filter(kind__in=["birthday", "appointment"]).update(enabled=True)
        Rule.objects.exclude(kind__in=["birthday", "appointment"]).update(enabled=False)
        patients = [
            PatientFactory(birth_date=dt.date(1960, 11, 24), line_user_id="U" + f"{n}" * 32)
            for n in range(3)
        ]
        for patient in patients:
            AppointmentFactory(patient=patient, starts_at=dt.datetime(2026, 11, 25, 15, tzinfo=TPE))
            AppointmentFactory(patient=patient, starts_at=dt.datetime(2026, 12, 1, 15, tzinfo=TPE))
        apply(patients, before)
        morning = dt.datetime(2026, 11, 24, 8, 0, tzinfo=TPE)
        with time_machine.travel(morning, tick=False):
            plan_due_messages(now=morning)

        apply(patients, between)  # consent changes after planning, before sending
        for permanent in failures:
            MemoryChannel.fail_next(ChannelError("provider says no", permanent=permanent))
        for minute in range(0, 60, 6):
            moment = dt.datetime(2026, 11, 24, 10, minute, tzinfo=TPE)
            with time_machine.travel(moment, tick=False):
                messages_dispatch(time_budget=5)

        sent = Counter(message.id for message in memory.outbox)
        assert all(count == 1 for count in sent.values())
        for outgoing in memory.outbox:
            row = OutboxMessage.objects.get(uuid=outgoing.id)
            assert row.channel == outgoing.channel
            assert may_contact(patient=row.patient, purpose=row.purpose, channel=outgoing.channel)
        transaction.set_rollback(True)
