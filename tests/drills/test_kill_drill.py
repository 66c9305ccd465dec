"""Fault drill: the sender is killed with SIGKILL at a random moment, fifty times over (seeded,
so a failure can be replayed), against the real Twilio client and a fake Twilio on 127.0.0.1.
Afterwards every message is final, nobody got the same SMS twice, and every SMS the provider
accepted is recorded as sent (or as unknown, for staff to check: never silently lost)."""

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from campaigns.models import Rule
from consent.models import Channel, Purpose
from patients.models import ClinicProfile
from reminders.models import OutboxMessage, Status
from tests.factories import PatientFactory, grant
from tests.reminders.fake_providers import FakeTwilio

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the sender needs a database it can share"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
RUNS = 50
PER_RUN = 4
SEED = int(os.environ.get("DRILL_SEED", "20261203"))


@pytest.fixture
def fake():
    provider = FakeTwilio().start()
    yield provider
    provider.stop()


def sender(fake: FakeTwilio, log: Path) -> subprocess.Popen:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": "+15017122661",
        "TWILIO_API_BASE_URL": fake.url,
        "CHANNEL_RATE_LIMITS": "sms=8",  # a run sends over about half a second
        "DISPATCH_CLAIM_LEASE_SECONDS": "1",
        "REDIS_URL": "",
    }
    return subprocess.Popen(  # noqa: S603  # our own manage.py
        [sys.executable, "manage.py", "dispatch_messages", "--seconds", "20"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def queue(rule: Rule, run: int) -> None:
    now = timezone.now()
    for n in range(PER_RUN):
        patient = PatientFactory()
        grant(patient, Purpose.CARE, Channel.SMS)
        OutboxMessage.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key=f"drill:{run}:{n}",
            purpose=Purpose.CARE,
            channel=Channel.SMS,
            due_at=now,
            next_attempt_at=now,
            expires_at=now + dt.timedelta(hours=2),
            body=f"drill {run}.{n}",
        )


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the sender sent nothing"
        time.sleep(0.01)


def unsettled() -> int:
    return OutboxMessage.objects.filter(status__in=[Status.QUEUED, Status.SENDING]).count()


def test_fifty_kills_at_random_moments_lose_nothing_and_send_nothing_twice(fake, tmp_path):
    ClinicProfile.objects.update_or_create(
        pk=1, defaults={"send_window_start": dt.time(0, 0), "send_window_end": dt.time(23, 59)}
    )
    rule = Rule.objects.get(name__startswith="術後關懷")  # needs no appointment to check
    rng = random.Random(SEED)
    log = tmp_path / "senders.log"
    killed_mid_send = 0

    for run in range(RUNS):
        queue(rule, run)
        requests_before = len(fake.requests)
        process = sender(fake, log)
        if rng.random() < 0.2:  # while it starts, claims, or checks the first message
            time.sleep(rng.uniform(0.1, 1.5))
        else:  # somewhere in the sending: four messages take about half a second
            wait_for(
                lambda n=requests_before, p=process: len(fake.requests) > n or p.poll() is not None
            )
            time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed_mid_send += len(fake.requests) > requests_before and unsettled() > 0

    # A last sender, past the claim lease, settles what the dead ones left.
    time.sleep(1.5)
    deadline = time.monotonic() + 120
    while unsettled() and time.monotonic() < deadline:
        finished = sender(fake, log)
        finished.wait(timeout=60)
        time.sleep(1.2)

    statuses = Counter(OutboxMessage.objects.values_list("status", flat=True))
    assert set(statuses) <= {Status.SENT, Status.UNKNOWN}, (statuses, log.read_text()[-3000:])
    assert sum(statuses.values()) == RUNS * PER_RUN
    accepted = [r for r in fake.requests if r.status == 201]
    received = Counter(request.form["To"][0] for request in accepted)
    assert max(received.values()) == 1, "a patient got the same SMS twice"
    phones = {
        status: {m.patient.phone for m in OutboxMessage.objects.filter(status=status)}
        for status in (Status.SENT, Status.UNKNOWN)
    }
    assert phones[Status.SENT] <= set(received), "recorded as sent, never reached the provider"
    # What the provider took and we could not record is shown to staff, never lost or resent.
    assert set(received) <= phones[Status.SENT] | phones[Status.UNKNOWN]
    assert killed_mid_send >= 5, "the kills all missed the sending: the drill tested nothing"
