"""Twilio can report on an SMS before our sender has committed it as sent. The report finds
its message by the uuid in the callback URL; while the message is still `sending` the report
is parked, and the sender applies it in the transaction that marks the message sent.

The first tests run the callback inside the adapter's send() on the same connection, so they
are deterministic on SQLite too. The PostgreSQL tests race real connections."""

import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import connection
from django.test import Client

from campaigns.models import Rule
from campaigns.planner import plan_due_messages
from consent.models import Channel, Purpose
from patients.models import ClinicProfile
from reminders.channels import memory
from reminders.channels.base import Channel as ChannelAdapter
from reminders.channels.base import OutgoingMessage, _load
from reminders.channels.memory import MemoryChannel
from reminders.models import OutboxMessage, Status
from reminders.services import messages_dispatch
from tests.factories import AppointmentFactory, PatientFactory, grant

from .test_webhooks import TOKEN, callback, report

pytestmark = pytest.mark.django_db
TPE = ZoneInfo("Asia/Taipei")
PLANNED = dt.datetime(2026, 11, 24, 8, 0, tzinfo=TPE)
SENDING = dt.datetime(2026, 11, 24, 10, 1, tzinfo=TPE)

# What Twilio does while our send() is still running: set by each test.
during_send: Callable[[OutgoingMessage, str], None] | None = None


class FastTwilio(ChannelAdapter):
    """An SMS adapter whose provider reports back before send() has even returned."""

    name = "sms"

    def send(self, message: OutgoingMessage) -> str:
        sid = "SM" + message.id.hex
        if during_send is not None:
            during_send(message, sid)
        return sid


@pytest.fixture(autouse=True)
def channels(settings):
    global during_send
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.PUBLIC_BASE_URL = "https://crm.clinic.example"
    settings.REMINDER_CHANNELS = {
        "sms": f"{__name__}.FastTwilio",
        "line": "reminders.channels.memory.MemoryChannel",
        "email": "reminders.channels.memory.MemoryChannel",
    }
    settings.CHANNEL_RATE_LIMITS = {}
    _load.cache_clear()
    MemoryChannel.reset()
    yield memory.outbox
    during_send = None
    MemoryChannel.reset()
    _load.cache_clear()


def notices(count: int) -> list[OutboxMessage]:
    """`count` patients with SMS and e-mail consent, each with one SMS notice due at 10:00."""
    Rule.objects.exclude(name__startswith="回診通知").update(enabled=False)
    for _ in range(count):
        patient = PatientFactory()
        for channel in (Channel.SMS, Channel.EMAIL):
            grant(patient, Purpose.CARE, channel)
        AppointmentFactory(patient=patient, starts_at=dt.datetime(2026, 12, 1, 14, 30, tzinfo=TPE))
    with time_machine.travel(PLANNED, tick=False):
        plan_due_messages(now=PLANNED)
    messages = list(OutboxMessage.objects.order_by("id"))
    assert [m.channel for m in messages] == ["sms"] * count
    return messages


def dispatch() -> None:
    with time_machine.travel(SENDING, tick=False):
        messages_dispatch(time_budget=10)


def test_delivered_report_that_comes_while_sending_is_applied_as_the_send_commits(client):
    global during_send
    [notice] = notices(1)
    seen = []

    def twilio_reports(message, sid):
        response = callback(client, message.id, report("delivered", sid=sid))
        row = OutboxMessage.objects.get(uuid=message.id)
        seen.append((response.status_code, row.status, row.parked_reports.count()))

    during_send = twilio_reports

    dispatch()

    # The report came while the row was still `sending`: it was kept, not dropped...
    assert seen == [(204, Status.SENDING, 1)]
    # ...and applied when the sender marked the message sent.
    notice.refresh_from_db()
    assert notice.status == Status.DELIVERED
    assert notice.provider_id == "SM" + notice.uuid.hex
    assert notice.delivered_at >= notice.sent_at
    assert not notice.parked_reports.exists()


def test_undelivered_report_that_comes_while_sending_moves_on_as_the_send_commits(client, channels):
    global during_send
    [notice] = notices(1)

    def twilio_reports(message, sid):
        callback(client, message.id, report("undelivered", sid=sid, ErrorCode="30003"))

    during_send = twilio_reports

    dispatch()

    # The SMS never arrived, so the same run sent the e-mail the patient also agreed to.
    assert [(m.id, m.channel) for m in channels] == [(notice.uuid, "email")]
    notice.refresh_from_db()
    assert (notice.channel, notice.status) == ("email", Status.SENT)
    assert not notice.parked_reports.exists()


def test_early_reports_only_move_forward(client):
    global during_send
    [notice] = notices(1)

    def twilio_reports(message, sid):
        for status in ("sent", "delivered", "undelivered"):  # out of order, as it may come
            callback(client, message.id, report(status, sid=sid, ErrorCode="30003"))

    during_send = twilio_reports

    dispatch()

    notice.refresh_from_db()
    assert (notice.status, notice.channel) == (Status.DELIVERED, "sms")


def test_early_report_about_another_message_sid_is_dropped_when_the_send_commits(client):
    global during_send
    [notice] = notices(1)

    def twilio_reports(message, sid):
        callback(client, message.id, report("delivered", sid="SM" + "f" * 32))

    during_send = twilio_reports

    dispatch()

    notice.refresh_from_db()
    assert notice.status == Status.SENT
    assert not notice.parked_reports.exists()


# --- real concurrency (PostgreSQL) ------------------------------------------------------------

concurrent = pytest.mark.django_db(transaction=True, serialized_rollback=True)
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs concurrent connections"
)


def post_from_another_connection(message_id, sid, responses: list[int]) -> None:
    try:
        responses.append(callback(Client(), message_id, report("delivered", sid=sid)).status_code)
    finally:
        connection.close()


def waiting_on_a_lock(timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.01)
    return False


@concurrent
@postgresql_only
def test_a_report_that_waits_for_the_senders_row_lock_sees_the_message_sent(monkeypatch):
    # given: the sender has marked the message sent but not yet committed, and Twilio's report
    # arrives on another connection right then
    ClinicProfile.load()
    [notice] = notices(1)
    from reminders import receipts

    real_apply = receipts.receipts_apply_parked
    threads, responses, blocked = [], [], []

    def apply_while_a_report_waits(*, message):
        thread = threading.Thread(
            target=post_from_another_connection,
            args=(message.uuid, message.provider_id, responses),
        )
        thread.start()
        threads.append(thread)
        blocked.append(waiting_on_a_lock())  # the report waits on the row the sender holds
        real_apply(message=message)

    monkeypatch.setattr(receipts, "receipts_apply_parked", apply_while_a_report_waits)

    # when
    dispatch()
    for thread in threads:
        thread.join(timeout=20)

    # then: the report read the row after the commit and applied itself
    assert blocked == [True]
    assert responses == [204]
    notice.refresh_from_db()
    assert notice.status == Status.DELIVERED
    assert not notice.parked_reports.exists()


@concurrent
@postgresql_only
def test_reports_racing_the_senders_commit_are_never_lost(caplog):
    # given: Twilio reports each SMS from another connection as soon as it has accepted it,
    # while the sender goes on to commit a moment later: the report lands before, during or
    # after that commit
    global during_send
    ClinicProfile.load()
    messages = notices(30)
    threads, responses = [], []

    def twilio_reports(message, sid):
        started = threading.Event()

        def report_now():
            connection.ensure_connection()  # Twilio's request is on its way, not connecting
            started.set()
            post_from_another_connection(message.id, sid, responses)

        thread = threading.Thread(target=report_now)
        thread.start()
        threads.append(thread)
        started.wait(timeout=5)
        time.sleep(random.uniform(0, 0.006))  # noqa: S311 - jitter, not security

    during_send = twilio_reports

    # when
    with caplog.at_level("INFO", logger="reminders"):
        dispatch()
        for thread in threads:
            thread.join(timeout=20)

    # then: every report found its message, whatever the order
    assert responses == [204] * len(messages)
    statuses = OutboxMessage.objects.values_list("status", flat=True)
    assert list(statuses) == [Status.DELIVERED] * len(messages)
    assert not OutboxMessage.objects.filter(parked_reports__isnull=False).exists()
    parked = sum("parked until the sender commits" in r.getMessage() for r in caplog.records)
    print(f"{parked} of {len(messages)} reports came before their send committed")
