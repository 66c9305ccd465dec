"""An in-memory channel for tests: keeps what was sent and can be told to fail.

    settings.REMINDER_CHANNELS = {"sms": "reminders.channels.memory.MemoryChannel", ...}
    MemoryChannel.fail_next(ChannelError("busy", permanent=False), times=2)
    ...
    assert [m.id for m in memory.outbox] == [...]
    MemoryChannel.reset()

State lives in the module and the class, not the instance: get_channel() caches one instance
per dotted path, and tests must see the same outbox whichever instance sent.
"""

import threading

from .base import Channel, OutgoingMessage

outbox: list[OutgoingMessage] = []


class MemoryChannel(Channel):
    """Appends the message to `outbox` and returns "memory-<id>", or raises the error it was
    told to raise."""

    name = "memory"
    _failures: list[Exception] = []
    _lock = threading.Lock()

    @classmethod
    def fail_next(cls, error: Exception, times: int = 1) -> None:
        """Raise `error` from the next `times` sends instead of sending."""
        with cls._lock:
            cls._failures.extend([error] * times)

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls._failures.clear()
            outbox.clear()

    def send(self, message: OutgoingMessage) -> str:
        with self._lock:
            if self._failures:
                raise self._failures.pop(0)
            outbox.append(message)
        return f"memory-{message.id}"
