"""Fault drill: the SMS provider answers 500, then 429 with Retry-After, for a while. Messages
are delayed, never lost or sent twice, and the retries never go over the rate limit."""

import datetime as dt
from collections import Counter

import pytest
import time_machine
from django.utils import timezone

from reminders.models import OutboxMessage, Status
from reminders.services import messages_dispatch
from tests.drills.sending import busiest_second, queue_sms

pytestmark = pytest.mark.django_db

MESSAGES = 30
RATE = 20  # sends a second


def twilio_error(fake, status: int, code: int, times: int, headers: dict | None = None) -> None:
    body = {"code": code, "message": "outage drill", "more_info": "", "status": status}
    fake.reply_next(status, body, headers=headers, times=times)


def test_a_provider_outage_delays_messages_and_loses_none(fake_twilio, settings):
    settings.CHANNEL_RATE_LIMITS = {"sms": float(RATE)}
    settings.REDIS_URL = ""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 1}
    queue_sms(MESSAGES, "outage")

    # The first minute Twilio answers 500 to everything,
    twilio_error(fake_twilio, 500, 20500, times=10_000)
    first = messages_dispatch(time_budget=30)
    # the next minute 429, asking for five minutes' peace,
    later = timezone.now() + dt.timedelta(minutes=1, seconds=1)
    with time_machine.travel(later, tick=True):
        fake_twilio._script.clear()
        twilio_error(fake_twilio, 429, 20429, times=10_000, headers={"Retry-After": "300"})
        second = messages_dispatch(time_budget=30)
        fake_twilio._script.clear()  # and then it is back.
        later = timezone.now()
    # Retry-After is honoured: the backoff alone would try again after two minutes.
    with time_machine.travel(later + dt.timedelta(minutes=2, seconds=10), tick=True):
        too_early = messages_dispatch(time_budget=30)
    with time_machine.travel(later + dt.timedelta(minutes=5, seconds=1), tick=True):
        third = messages_dispatch(time_budget=30)

    assert first["retrying"] == second["retrying"] == MESSAGES, (first, second)
    assert sum(too_early.values()) == 0
    assert third["sent"] == MESSAGES
    statuses = Counter(OutboxMessage.objects.values_list("status", flat=True))
    assert statuses == {Status.SENT: MESSAGES}
    accepted = Counter(r.form["To"][0] for r in fake_twilio.requests if r.status == 201)
    assert len(accepted) == MESSAGES and max(accepted.values()) == 1
    assert len(fake_twilio.requests) == 3 * MESSAGES  # three tries each, no more
    assert busiest_second([r.at for r in fake_twilio.requests]) <= RATE
    # The retries went at the limit's pace, not all at once.
    # (The fake stamps requests on the monotonic clock, which time travel leaves alone.)
