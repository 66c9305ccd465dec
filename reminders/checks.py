"""`manage.py check --deploy`: say which channels will not reach patients."""

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from consent.models import Channel


@checks.register(checks.Tags.security, deploy=True)
def check_channels(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A channel without credentials is off; one on the console channel only logs."""
    found: list[checks.CheckMessage] = []
    for channel in Channel.values:
        path = settings.REMINDER_CHANNELS.get(channel)
        if not path:
            found.append(
                checks.Warning(
                    f"The {channel} channel is off: its provider credentials are not set. "
                    "Rules skip it with the reason 'channel not configured'.",
                    id="reminders.W001",
                )
            )
        elif path.endswith(".ConsoleChannel") and not settings.DEBUG:
            found.append(
                checks.Warning(
                    f"The {channel} channel only logs (CONSOLE_CHANNELS): nothing reaches "
                    "patients on it.",
                    id="reminders.W002",
                )
            )
    return found
