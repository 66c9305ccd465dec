"""What providers tell us back about our messages (delivery reports), and the record of the
webhook events we have already applied, so that a replay acts once.

A Twilio status callback can arrive before the sender has committed the message as `sent`
(Twilio answers fast; our transaction is still open). The callback URL carries the message's
uuid, so the report finds its message without the provider id; while the message is still
`sending` the report is parked, and the sender applies it in the transaction that marks the
message sent. The callback locks the message row, and so does the sender's UPDATE: whichever
comes second sees what the first committed, so no report is lost.
"""

import logging
import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from consent.models import Channel
from reminders.models import OutboxMessage, ParkedReport, StaffTask, Status, WebhookEvent
from reminders.services import _finish, _next_channel

log = logging.getLogger(__name__)

# Twilio MessageStatus values that end a message's story; earlier ones (queued, sent) are noise.
DELIVERED_STATUSES = {"delivered", "read"}
UNDELIVERED_STATUSES = {"undelivered", "failed"}
FINAL_STATUSES = DELIVERED_STATUSES | UNDELIVERED_STATUSES


class ReportOutcome(StrEnum):
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # moved on to the next channel, or failed when none was left
    PARKED = "parked until the sender commits"
    NOTHING = "nothing to change"
    NO_MESSAGE = "no such message"
    REPLAYED = "already applied"


def webhook_event_record(*, provider: WebhookEvent.Provider, event_id: str, now: datetime) -> bool:
    """Note that the provider's event `event_id` arrived; False when it had arrived before.

    Call it inside the transaction that applies the event: a failure while applying rolls the
    record back too, so the provider's retry is applied. Raises RuntimeError outside one."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("webhook_event_record must run in the transaction applying the event")
    try:
        # A savepoint: the caller's transaction goes on after a duplicate. On PostgreSQL a
        # second copy arriving at the same moment waits here for the first to commit or roll
        # back, so exactly one of them applies the event.
        with transaction.atomic():
            WebhookEvent.objects.create(provider=provider, event_id=event_id, received_at=now)
    except IntegrityError:
        return False
    return True


def webhook_events_forget(*, now: datetime) -> int:
    """Delete event records and parked reports older than WEBHOOK_DEDUPE_DAYS; returns how
    many event records went."""
    # A day beyond the age at which replies refuse an event outright (replies.reply_handle),
    # so a provider's clock ahead of ours leaves no gap between refused and recognised.
    before = now - timedelta(days=settings.WEBHOOK_DEDUPE_DAYS + 1)
    # A parked report outlives its use within minutes (the send commits or recovery settles
    # the message); an old one belongs to a message that was never marked sent.
    ParkedReport.objects.filter(received_at__lt=before).delete()
    deleted, _by_model = WebhookEvent.objects.filter(received_at__lt=before).delete()
    return deleted


@transaction.atomic
def message_delivery_report(
    *,
    message_uuid: uuid.UUID | None,
    provider_id: str,
    provider_status: str,
    error_code: str = "",
    now: datetime,
) -> ReportOutcome:
    """Apply a provider's delivery report for the SMS `message_uuid` (None: a callback URL from
    before the uuid was in it, found by `provider_id` alone). Raises nothing for a report that
    matches nothing.

    Reports come more than once and out of order, so a message only moves forward: from
    `sent` to delivered, or on to its next channel when the SMS never arrived. A report for a
    message still `sending` is parked for its sender.
    """
    seen = f"{provider_id}:{provider_status}"
    if not webhook_event_record(
        provider=WebhookEvent.Provider.TWILIO_STATUS, event_id=seen, now=now
    ):
        return ReportOutcome.REPLAYED
    # Locked: the sender's UPDATE to `sent` holds this row until it commits, so this read
    # waits for it and then sees `sent`; or this transaction parks the report first, and the
    # sender's UPDATE waits for that to commit before it looks for parked reports. Of two
    # reports read at once, the second sees what the first did.
    messages = OutboxMessage.objects.select_for_update()
    if message_uuid is not None:
        message = messages.filter(uuid=message_uuid).first()
    else:
        message = messages.filter(provider_id=provider_id, status=Status.SENT).first()
    if message is None:
        return ReportOutcome.NO_MESSAGE
    if message.channel != Channel.SMS:
        return ReportOutcome.NOTHING  # the SMS already fell through to another channel
    if message.status == Status.UNKNOWN and message_uuid is not None:
        return _settle_unknown(message, provider_id, provider_status, error_code, now=now)
    if message.status == Status.SENDING:
        if provider_status not in FINAL_STATUSES:
            return ReportOutcome.NOTHING
        ParkedReport.objects.create(
            message=message,
            provider_id=provider_id,
            provider_status=provider_status,
            error_code=error_code,
            received_at=now,
        )
        return ReportOutcome.PARKED
    return _apply(message, provider_id, provider_status, error_code, now=now)


def receipts_apply_parked(*, message: OutboxMessage) -> None:
    """Apply the delivery reports that arrived while `message` was being sent. Call it in the
    transaction that marks the message sent, after that UPDATE (which holds the row lock)."""
    if message.channel != Channel.SMS:
        return  # only Twilio reports can be early: saves a query for every other send
    parked = list(message.parked_reports.order_by("received_at", "pk"))
    if not parked:
        return
    for report in parked:
        # `sent_at` is set as the send commits, after Twilio already reported delivery.
        when = max(report.received_at, message.sent_at or report.received_at)
        outcome = _apply(
            message, report.provider_id, report.provider_status, report.error_code, now=when
        )
        log.info("early report for message %s: %s", message.uuid, outcome)
    ParkedReport.objects.filter(pk__in=[report.pk for report in parked]).delete()


def _apply(
    message: OutboxMessage,
    provider_id: str,
    provider_status: str,
    error_code: str,
    *,
    now: datetime,
) -> ReportOutcome:
    # Forward only: delivered stays delivered, and a message that moved on stays moved on. A
    # different provider id is a report about another hand-over of this message.
    if message.status != Status.SENT or message.provider_id != provider_id:
        return ReportOutcome.NOTHING
    if provider_status in DELIVERED_STATUSES:
        _finish(message, status=Status.DELIVERED, delivered_at=now)
        return ReportOutcome.DELIVERED
    if provider_status in UNDELIVERED_STATUSES:
        reason = _("%(channel)s: not delivered, error %(code)s") % {
            "channel": Channel(message.channel).label,
            "code": error_code or "?",
        }
        _next_channel(message, now=now, reason=reason, exhausted=Status.FAILED)
        return ReportOutcome.UNDELIVERED
    return ReportOutcome.NOTHING


def _settle_unknown(
    message: OutboxMessage,
    provider_id: str,
    provider_status: str,
    error_code: str,
    *,
    now: datetime,
) -> ReportOutcome:
    """A final report about an SMS whose hand-over we could not confirm (a timeout, a worker
    killed mid-send): Twilio had it after all, so staff need not check by hand."""
    if provider_status not in FINAL_STATUSES:
        return ReportOutcome.NOTHING
    first_try = message.attempts_log.order_by("started_at").values_list("started_at", flat=True)
    _finish(message, status=Status.SENT, provider_id=provider_id, sent_at=first_try.first() or now)
    StaffTask.objects.filter(
        kind=StaffTask.Kind.REVIEW_UNKNOWN, message=message, done_at__isnull=True
    ).update(done_at=now, note=_("settled by the provider's delivery report"))
    return _apply(message, provider_id, provider_status, error_code, now=now)
