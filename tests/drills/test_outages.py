"""Fault drills: the database restarts in the middle of sending, and Redis (the broker and the
shared send-rate slots) goes away for a while. Both only delay messages: afterwards every
message is final, none reached a patient twice, and none the provider took is unrecorded."""

import datetime as dt
import os
import shutil
import signal
import socket
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

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the sender needs a database it can share"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 60


def queue_messages() -> None:
    ClinicProfile.objects.update_or_create(
        pk=1,
        defaults={
            "send_window_start": dt.time(0, 0),
            "send_window_end": dt.time(23, 59),
            "closed_weekdays": [],
        },
    )
    rule = Rule.objects.get(name__startswith="術後關懷")  # needs no appointment to check
    now = timezone.now()
    for n in range(MESSAGES):
        patient = PatientFactory(phone=f"0912-111-{n:03d}")
        grant(patient, Purpose.CARE, Channel.SMS)
        OutboxMessage.objects.create(
            rule=rule,
            patient=patient,
            occurrence_key=f"outage:{n}",
            purpose=Purpose.CARE,
            channel=Channel.SMS,
            due_at=now,
            next_attempt_at=now,
            expires_at=now + dt.timedelta(hours=2),
            body=f"outage drill {n}",
        )


def sender(fake, log: Path, **env: str) -> subprocess.Popen:
    db = connection.settings_dict
    environment = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": "+15017122661",
        "TWILIO_API_BASE_URL": fake.url,
        "CHANNEL_RATE_LIMITS": "sms=20",  # sixty messages take three seconds
        "DISPATCH_CLAIM_LEASE_SECONDS": "1",
        "REDIS_URL": "",
        **env,
    }
    return subprocess.Popen(  # noqa: S603  # our own manage.py
        [sys.executable, "manage.py", "dispatch_messages", "--seconds", "60"],
        cwd=ROOT,
        env=environment,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def unsettled() -> int:
    return OutboxMessage.objects.filter(status__in=[Status.QUEUED, Status.SENDING]).count()


def settle(fake, log: Path, **env: str) -> None:
    """Senders, past the claim lease, until nothing is left to settle."""
    deadline = time.monotonic() + 120
    while unsettled():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1.2)
        sender(fake, log, **env).wait(timeout=90)


def assert_nothing_lost_or_doubled(fake, log: Path) -> None:
    statuses = Counter(OutboxMessage.objects.values_list("status", flat=True))
    assert set(statuses) <= {Status.SENT, Status.UNKNOWN}, (statuses, log.read_text()[-3000:])
    assert sum(statuses.values()) == MESSAGES
    accepted = Counter(r.form["To"][0] for r in fake.requests if r.status == 201)
    assert max(accepted.values()) == 1, "a patient got the same SMS twice"
    phones = {
        status: {m.patient.phone for m in OutboxMessage.objects.filter(status=status)}
        for status in (Status.SENT, Status.UNKNOWN)
    }
    assert phones[Status.SENT] <= set(accepted)
    assert set(accepted) <= phones[Status.SENT] | phones[Status.UNKNOWN]


PG_CLUSTER = shutil.which("pg_ctlcluster")


@pytest.mark.skipif(
    not (PG_CLUSTER and os.environ.get("DRILL_RESTART_POSTGRES") == "1"),
    reason="restarts the machine's PostgreSQL: set DRILL_RESTART_POSTGRES=1 (.ci/run does)",
)
def test_postgresql_restarting_mid_dispatch_loses_nothing_and_sends_nothing_twice(
    fake_twilio, tmp_path
):
    queue_messages()
    log = tmp_path / "senders.log"
    running = sender(fake_twilio, log)
    wait_for(lambda: len(fake_twilio.requests) >= 10, 60, "the first sends")

    version = next(Path("/etc/postgresql").iterdir()).name
    subprocess.run(  # noqa: S603  # the operator's tool
        [PG_CLUSTER, "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    running.wait(timeout=90)  # the sender loses its connection and ends
    connection.close()  # this test's connection went down with the server too
    assert unsettled() > 0, "the sender finished before the restart: nothing was tested"

    settle(fake_twilio, log)
    assert_nothing_lost_or_doubled(fake_twilio, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int) -> subprocess.Popen:
    process = subprocess.Popen(  # noqa: S603  # a Redis of the drill's own
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _answers(port), 10, "redis to start")
    return process


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_going_away_mid_dispatch_delays_messages_and_loses_none(fake_twilio, tmp_path):
    queue_messages()
    log = tmp_path / "senders.log"
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port)
    try:
        running = sender(fake_twilio, log, REDIS_URL=redis_url)
        wait_for(lambda: len(fake_twilio.requests) >= 10, 60, "the first sends")

        redis.send_signal(signal.SIGKILL)  # gone, without a goodbye
        redis.wait(timeout=10)
        running.wait(timeout=60)
        assert running.returncode != 0, "the sender carried on without its rate limiter"
        assert unsettled() > 0, "the sender finished before Redis went: nothing was tested"
        # While Redis is away a sender sends nothing: no slot, no send.
        sent_before = len(fake_twilio.requests)
        sender(fake_twilio, log, REDIS_URL=redis_url).wait(timeout=60)
        assert len(fake_twilio.requests) == sent_before

        redis = start_redis(port)  # back
        settle(fake_twilio, log, REDIS_URL=redis_url)
    finally:
        redis.kill()
        redis.wait(timeout=10)
    assert_nothing_lost_or_doubled(fake_twilio, log)
