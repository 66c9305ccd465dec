"""The providers' rate limits hold for every worker process together: through Redis when there
are several clusters, by each process's share when there is one."""

import multiprocessing
import secrets
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from campaigns.models import Rule
from consent.models import Channel, Purpose
from reminders.models import OutboxMessage, Status
from reminders.ratelimit import LocalRateLimiter, RedisRateLimiter, rate_limiter
from reminders.services import messages_dispatch
from tests.factories import PatientFactory, grant

REDIS = "redis://127.0.0.1:6379/15"


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False


needs_redis = pytest.mark.skipif(not redis_up(), reason="needs Redis on 127.0.0.1:6379")


def busiest_second(moments: list[float]) -> int:
    """The most sends any one-second window saw, as a provider counting them would."""
    moments = sorted(moments)
    return max(
        sum(1 for other in moments[i:] if other < start + 1.0) for i, start in enumerate(moments)
    )


def test_one_process_keeps_to_its_rate():
    limiter = LocalRateLimiter({"sms": 10})
    moments = []
    for _ in range(15):
        limiter.wait("sms")
        moments.append(time.monotonic())

    assert busiest_second(moments) <= 10
    assert moments[-1] - moments[0] >= 14 / 10  # and did not stop early


def test_a_channel_without_a_limit_never_waits():
    limiter = LocalRateLimiter({"sms": 10})
    started = time.monotonic()
    for _ in range(50):
        limiter.wait("email")
    assert time.monotonic() - started < 0.5


def _sender(prefix: str, rate: float, sends: int, out: "multiprocessing.Queue[list[float]]"):
    limiter = RedisRateLimiter({"sms": rate}, url=REDIS, prefix=prefix)
    moments = []
    for _ in range(sends):
        limiter.wait("sms")
        moments.append(time.time())
    out.put(moments)


@needs_redis
def test_processes_sharing_redis_stay_under_the_limit_together():
    prefix = f"test:{secrets.token_hex(4)}"
    out: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    senders = [
        multiprocessing.Process(target=_sender, args=(prefix, 20, 15, out)) for _ in range(3)
    ]
    for sender in senders:
        sender.start()
    moments = [moment for _ in senders for moment in out.get(timeout=30)]
    for sender in senders:
        sender.join(timeout=10)

    # Alone, each would send 20 a second; together they still send at most 20 a second.
    assert len(moments) == 45
    assert busiest_second(moments) <= 20
    assert max(moments) - min(moments) >= 44 / 20


@needs_redis
def test_an_idle_channel_starts_again_at_once():
    limiter = RedisRateLimiter({"sms": 5}, url=REDIS, prefix=f"test:{secrets.token_hex(4)}")
    limiter.wait("sms")
    time.sleep(0.3)  # longer than the slot: nothing to wait for
    started = time.monotonic()
    limiter.wait("sms")
    assert time.monotonic() - started < 0.05


def test_without_redis_the_limiter_refuses_rather_than_sends_unlimited():
    limiter = RedisRateLimiter({"sms": 5}, url="redis://127.0.0.1:1/0")
    with pytest.raises(redis.ConnectionError):
        limiter.wait("sms")


def test_redis_url_chooses_the_shared_limiter_and_no_redis_each_workers_share(settings):
    settings.CHANNEL_RATE_LIMITS = {"sms": 30.0}
    settings.REDIS_URL = REDIS
    assert isinstance(rate_limiter(), RedisRateLimiter)

    settings.REDIS_URL = ""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 3}
    local = rate_limiter()
    assert isinstance(local, LocalRateLimiter)
    assert local.interval["sms"] == pytest.approx(1 / (10 * 0.95))


@pytest.mark.django_db
def test_dispatch_without_its_shared_limiter_sends_nothing_and_puts_the_batch_back(
    settings, memory_channels
):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.CHANNEL_RATE_LIMITS = {"sms": 5.0}
    due = timezone.now() - timedelta(minutes=1)
    patient = PatientFactory(phone="0912-345-678")
    grant(patient, Purpose.CARE, Channel.SMS)
    message = OutboxMessage.objects.create(
        rule=Rule.objects.order_by("pk").first(),
        patient=patient,
        occurrence_key="limiter-down",
        purpose=Purpose.CARE,
        channel=Channel.SMS,
        due_at=due,
        next_attempt_at=due,
        expires_at=due + timedelta(days=1),
        body="x",
    )

    with pytest.raises(redis.ConnectionError):
        messages_dispatch(time_budget=5)

    message.refresh_from_db()
    assert message.status == Status.QUEUED
    assert not message.attempts_log.exists()
    assert memory_channels == []
