"""Small things many tests say: a time in the clinic's zone, only some shipped rules on, and
planning or dispatching at a frozen moment."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import connection

from campaigns.models import Rule
from campaigns.planner import plan_due_messages
from reminders.services import messages_dispatch

TPE = ZoneInfo("Asia/Taipei")
MEMORY = "reminders.channels.memory.MemoryChannel"


# Tests of rows with no database foreign key (the outbox's patient and records, the skips):
# on SQLite, a development database, the keys are still there.
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite keeps the foreign keys"
)


def delete_by_hand(table: str, pk: int) -> None:
    """Delete a row past the ORM, as the app's database role could, with every constraint
    checked at once: a foreign key to it would refuse the DELETE here, not at the end."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [pk])  # noqa: S608 - a test's name


def taipei(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=TPE)


def only(prefix: str) -> Rule | None:
    """Leave enabled just the shipped rules whose names start with `prefix`; return the first."""
    Rule.objects.exclude(name__startswith=prefix).update(enabled=False)
    return Rule.objects.filter(name__startswith=prefix).order_by("pk").first()


def plan(moment: dt.datetime):
    """Plan every enabled rule at `moment`, with the clock frozen there too."""
    with time_machine.travel(moment, tick=False):
        return plan_due_messages(now=moment)


def dispatch(moment: dt.datetime):
    """One dispatch run at `moment`, with the clock frozen there."""
    with time_machine.travel(moment, tick=False):
        return messages_dispatch(time_budget=5)


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def text_of(message):
    """The text a planned message goes out with on its channel, made as dispatch makes it
    (planning stores no text: campaigns.planner.message_text)."""
    from campaigns.planner import message_text

    text = message_text(message, message.channel, now=message.due_at)
    assert text is not None, "the rule has no template for the message's channel"
    return text
