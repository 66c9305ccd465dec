"""Fault drill: the sender is killed with SIGKILL at a random moment, fifty times over (seeded,
so a failure can be replayed), against the real Twilio client and a fake Twilio on 127.0.0.1.
Afterwards every message is final, nobody got the same SMS twice, and every SMS the provider
accepted is recorded as sent (or as unknown, for staff to check: never silently lost)."""

import os
import random
import signal
import time

import pytest
from django.db import connection

from tests.drills.sending import (
    assert_nothing_lost_or_doubled,
    queue_sms,
    sender,
    settle,
    unsettled,
    wait_for,
)

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the sender needs a database it can share"
    ),
]

RUNS = 50
PER_RUN = 4
SEED = int(os.environ.get("DRILL_SEED", "20261203"))


def test_fifty_kills_at_random_moments_lose_nothing_and_send_nothing_twice(fake_twilio, tmp_path):
    rng = random.Random(SEED)
    log = tmp_path / "senders.log"
    killed_mid_send = 0

    for run in range(RUNS):
        queue_sms(PER_RUN, f"drill:{run}")
        requests_before = len(fake_twilio.requests)
        # A run sends its four messages over about half a second.
        process = sender(fake_twilio, log, seconds=20, CHANNEL_RATE_LIMITS="sms=8")
        if rng.random() < 0.2:  # while it starts, claims, or checks the first message
            time.sleep(rng.uniform(0.1, 1.5))
        else:  # somewhere in the sending
            wait_for(
                lambda n=requests_before, p=process: (
                    len(fake_twilio.requests) > n or p.poll() is not None
                ),
                30,
                "the first send",
            )
            time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed_mid_send += len(fake_twilio.requests) > requests_before and unsettled() > 0

    settle(fake_twilio, log)  # a last sender, past the claim lease, settles what the dead left

    assert_nothing_lost_or_doubled(fake_twilio, log, RUNS * PER_RUN)
    assert killed_mid_send >= 5, "the kills all missed the sending: the drill tested nothing"
