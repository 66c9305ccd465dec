"""How fast we may hand messages to each provider: CHANNEL_RATE_LIMITS sends per second per
channel, for all worker processes on all hosts together.

With REDIS_URL set (several django-q2 clusters, perhaps on several hosts) the send slots are
handed out by Redis: one atomic script per send reserves the channel's next free slot on Redis's
own clock, so no two processes get the same slot and no host's clock matters. Without Redis
there is one cluster on one host, and each of its Q_WORKERS processes keeps its own share.
"""

import time
from typing import Any, Protocol

from django.conf import settings

# Each request reaches the provider a few ms after its slot (the gate's queries, the
# scheduler), a little more or less each time. With slots exactly 1/rate apart a provider
# counting any one-second window sees rate + 1 about every other second; 5 % wider slots
# absorb up to 50 ms of that jitter.
HEADROOM = 0.95


class RateLimiter(Protocol):
    def wait(self, channel: str) -> None:
        """Return when the next send on `channel` may start."""


class LocalRateLimiter:
    """At most `per_second` sends per channel from this process, in any one-second window."""

    def __init__(self, per_second: dict[str, float]) -> None:
        self.interval = {ch: 1.0 / (rate * HEADROOM) for ch, rate in per_second.items() if rate > 0}
        self.next_slot: dict[str, float] = {}

    def wait(self, channel: str) -> None:
        interval = self.interval.get(channel)
        if not interval:
            return
        now = time.monotonic()
        slot = max(now, self.next_slot.get(channel, now))
        self.next_slot[channel] = slot + interval
        if slot > now:
            time.sleep(slot - now)


# KEYS[1]: the channel's next free slot (microseconds, Redis time); ARGV[1]: the interval.
# Returns how long the caller waits for the slot it now holds. The key expires once idle.
RESERVE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
redis.call('SET', KEYS[1], slot + tonumber(ARGV[1]), 'PX', 60000)
return slot - now
"""


class RedisRateLimiter:
    """At most `per_second` sends per channel from every process sharing this Redis."""

    def __init__(self, per_second: dict[str, float], *, url: str, prefix: str = "crm:rate") -> None:
        import redis

        self.interval_us = {
            ch: int(1_000_000 / (rate * HEADROOM)) for ch, rate in per_second.items() if rate > 0
        }
        client: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.reserve = client.register_script(RESERVE_SLOT)
        self.prefix = prefix

    def wait(self, channel: str) -> None:
        interval = self.interval_us.get(channel)
        if not interval:
            return
        delay_us = int(self.reserve(keys=[f"{self.prefix}:{channel}"], args=[interval]))
        if delay_us > 0:
            time.sleep(delay_us / 1_000_000)


def rate_limiter() -> RateLimiter:
    """The limiter for this dispatch run, from CHANNEL_RATE_LIMITS and REDIS_URL."""
    rates: dict[str, float] = settings.CHANNEL_RATE_LIMITS
    if settings.REDIS_URL:
        return RedisRateLimiter(rates, url=settings.REDIS_URL)
    workers = max(1, int(str(settings.Q_CLUSTER.get("workers", 1))))
    # Each worker process takes its share of the channel's limit, so together they stay under it.
    return LocalRateLimiter({ch: rate / workers for ch, rate in rates.items()})
