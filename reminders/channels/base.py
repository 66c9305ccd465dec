"""What every channel adapter takes, returns and raises.

An adapter has one job: hand one message to its provider and return the provider's id for it.
The outbox service does the bookkeeping (claiming, consent re-check, retries, fall-through).
"""

import uuid
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class OutgoingMessage:
    id: uuid.UUID  # stable across retries: LINE's X-Line-Retry-Key, log correlation
    channel: str  # "sms", "line" or "email"
    to: str  # E.164 phone, LINE user id, or e-mail address
    body: str
    subject: str = ""  # e-mail only
    html_body: str = ""  # e-mail only
    # What the message is, for channels that offer tap answers (LINE buttons and quick
    # replies, reminders.channels.line): its rule's kind, whether it asks to confirm, and the
    # patient's language for the button labels.
    rule_kind: str = ""
    asks_confirmation: bool = False
    language: str = ""


class ChannelError(Exception):
    """The provider did not take the message.

    `permanent` means retrying can't help (invalid number, blocked user): try the next channel.
    Otherwise retry later, no sooner than `retry_after` seconds when the provider said so.
    """

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class OutcomeUnknown(Exception):
    """The request may have reached the provider but no answer came back (a timeout after
    sending). For a provider without idempotency keys this must go to staff review, never to an
    automatic resend."""


class Channel:
    name = ""

    def send(self, message: OutgoingMessage) -> str:
        """Send `message`; return the provider's id. Raises ChannelError or OutcomeUnknown."""
        raise NotImplementedError


@lru_cache(maxsize=16)
def _load(dotted_path: str) -> Channel:
    adapter: Channel = import_string(dotted_path)()
    return adapter


class ChannelNotConfigured(Exception):
    """The channel is off here: its provider's credentials are not set."""


def channel_configured(name: str) -> bool:
    """Whether `name` has an adapter here; a channel without credentials is off, never faked."""
    return bool(settings.REMINDER_CHANNELS.get(name))


def get_channel(name: str) -> Channel:
    """The adapter configured for `name` in settings.REMINDER_CHANNELS, created once.

    Raises ChannelNotConfigured for a channel that is off."""
    if not channel_configured(name):
        raise ChannelNotConfigured(name)
    return _load(settings.REMINDER_CHANNELS[name])


class InvalidSignature(Exception):
    """A webhook request not signed by the provider: refuse it, change nothing."""


@dataclass(frozen=True)
class Inbound:
    """Something a patient did on a channel, as our code sees it, whatever the provider."""

    channel: str  # "sms" or "line"
    # "text", "unfollow" (LINE: blocked us), "follow", "postback" (LINE: a button) or
    # "not_text" (LINE: a sticker, a photo, a file)
    kind: str
    sender: str  # E.164 phone or LINE user id
    text: str = ""
    # LINE: the event's replyToken, for one free answer within a minute ("" when none).
    reply_token: str = ""
    # LINE postback: the tapped button's data (reminders.answers), already bounded in length.
    postback: str = ""
