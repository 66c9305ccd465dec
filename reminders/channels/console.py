"""A channel for development: logs that a message would have been sent, and nothing private."""

import logging

from .base import Channel, OutgoingMessage

logger = logging.getLogger(__name__)


def mask_recipient(to: str) -> str:
    """The last three characters of a phone number, LINE id or address; the rest hidden."""
    return "***" + to[-3:] if len(to) > 3 else "***"


class ConsoleChannel(Channel):
    """Logs the message id, channel, masked recipient and body length; returns
    "console-<id>". Never raises."""

    name = "console"

    def send(self, message: OutgoingMessage) -> str:
        # House rule: never log a body, a full phone number or a name.
        logger.info(
            "console send channel=%s message=%s to=%s body_chars=%d",
            message.channel,
            message.id,
            mask_recipient(message.to),
            len(message.body),
        )
        return f"console-{message.id}"
