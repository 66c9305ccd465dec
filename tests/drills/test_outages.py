"""Fault drills: the database restarts in the middle of sending, and Redis (the broker and the
shared send-rate slots) goes away for a while. Both only delay messages: afterwards every
message is final, none reached a patient twice, and none the provider took is unrecorded."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

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
from tests.helpers import free_port

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the sender needs a database it can share"
    ),
]

MESSAGES = 60
RATE = {"CHANNEL_RATE_LIMITS": "sms=20"}  # sixty messages take three seconds


PG_CLUSTER = shutil.which("pg_ctlcluster")


@pytest.mark.skipif(
    not (PG_CLUSTER and os.environ.get("DRILL_RESTART_POSTGRES") == "1"),
    reason="restarts the machine's PostgreSQL: set DRILL_RESTART_POSTGRES=1 (.ci/run does)",
)
def test_postgresql_restarting_mid_dispatch_loses_nothing_and_sends_nothing_twice(
    fake_twilio, tmp_path
):
    queue_sms(MESSAGES, "outage")
    log = tmp_path / "senders.log"
    running = sender(fake_twilio, log, **RATE)
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

    settle(fake_twilio, log, **RATE)
    assert_nothing_lost_or_doubled(fake_twilio, log, MESSAGES)


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
    queue_sms(MESSAGES, "outage")
    log = tmp_path / "senders.log"
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port)
    try:
        running = sender(fake_twilio, log, REDIS_URL=redis_url, **RATE)
        wait_for(lambda: len(fake_twilio.requests) >= 10, 60, "the first sends")

        redis.send_signal(signal.SIGKILL)  # gone, without a goodbye
        redis.wait(timeout=10)
        running.wait(timeout=60)
        assert running.returncode != 0, "the sender carried on without its rate limiter"
        assert unsettled() > 0, "the sender finished before Redis went: nothing was tested"
        # While Redis is away a sender sends nothing: no slot, no send.
        sent_before = len(fake_twilio.requests)
        sender(fake_twilio, log, REDIS_URL=redis_url, **RATE).wait(timeout=60)
        assert len(fake_twilio.requests) == sent_before

        redis = start_redis(port)  # back
        settle(fake_twilio, log, REDIS_URL=redis_url, **RATE)
    finally:
        redis.kill()
        redis.wait(timeout=10)
    assert_nothing_lost_or_doubled(fake_twilio, log, MESSAGES)
