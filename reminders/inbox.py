"""The staff inbox: what patients write that no keyword handles, kept (encrypted) for staff to
read and answer, and the messages staff write to one patient.

An inbound text is kept by reminders.replies, in the transaction that applies its webhook
event, once per event. A sender whose phone or LINE id belongs to exactly one patient is that
patient's; an unknown sender, or a phone several patients share, waits in the inbox until staff
link it to a patient. A staff message goes through the outbox and its gate like any other
(campaigns.policy): an answer within SERVICE_WINDOW of the patient's own message on the same
channel is service and needs no consent for a purpose, unless the channel was withdrawn.
"""

import logging
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.costs import channel_size
from campaigns.models import Rule, RuleKind, SkipReason
from campaigns.policy import SERVICE_WINDOW, channel_decision
from campaigns.sendwindow import fit
from clinic_crm.normalise import phone_e164
from clinic_crm.validators import MULTILINE_ALLOWED
from consent.models import Channel, Purpose
from patients.models import ClinicProfile, Patient
from reminders.channels.base import Inbound
from reminders.models import InboundMessage, OutboxMessage, StaffTask, Status
from surveys.models import VisitRating

log = logging.getLogger(__name__)

# LINE allows 5,000 characters and an SMS can be joined from many parts: what is longer is
# kept up to here, with a mark that it was shortened.
MAX_TEXT_CHARS = 2000
TRUNCATED_MARK = " […]"
ADDRESS_INDEX = {"sms": "phone", "line": "line_user_id"}
REPLY_CHANNELS = (Channel.SMS, Channel.LINE)
# A staff message is still worth sending this long after it was written (a weekend of closed
# days with the send window).
STAFF_MESSAGE_LIFE = timedelta(days=3)
MAX_REPLY_CHARS = 1000
# The post-op check-in's "need a call" answer: the digit the SMS version offers (item 2 of the
# conversations issue: 1 fine, 2 some pain, 3 need a call), or words asking for a call.
POSTOP_CALL_DIGIT = "3"
POSTOP_CALL_WORDS = ("電話", "來電", "回電", "CALL", "PHONE")
POSTOP_ANSWER_WINDOW = timedelta(days=3)


def text_clean(text: str) -> tuple[str, bool]:
    """`text` without control characters (line breaks and tabs stay), shortened to
    MAX_TEXT_CHARS with a mark; returns it and whether it was shortened."""
    kept = "".join(
        ch for ch in text if unicodedata.category(ch) != "Cc" or ch in MULTILINE_ALLOWED
    ).strip()
    if len(kept) > MAX_TEXT_CHARS:
        return kept[: MAX_TEXT_CHARS - len(TRUNCATED_MARK)] + TRUNCATED_MARK, True
    return kept, False


def sender_index(channel: str, sender: str) -> str:
    """The blind index the sender's address has on a patient (phone or LINE id)."""
    return str(Patient.index_of(ADDRESS_INDEX[channel], sender) or "")


def _address(inbound: Inbound) -> str:
    sender = "".join(ch for ch in inbound.sender if unicodedata.category(ch) != "Cc")[:100]
    return (phone_e164(sender) or sender) if inbound.channel == Channel.SMS else sender


def inbound_keep(
    *, inbound: Inbound, patients: list[Patient], event_id: str, now: datetime
) -> InboundMessage | None:
    """Keep an inbound text for the inbox, once per provider event; None when it was kept
    already or holds nothing. Call it inside the transaction applying the event. When the text
    answers a post-op check-in with "need a call", a call task is made at once."""
    text, truncated = text_clean(inbound.text)
    if not text:
        return None
    patient = patients[0] if len(patients) == 1 else None
    # A new message joins its conversation's current holder.
    assignee_id = (
        InboundMessage.objects.filter(patient=patient, handled_at__isnull=True)
        .order_by("-received_at")
        .values_list("assignee_id", flat=True)
        .first()
        if patient
        else None
    )
    try:
        with transaction.atomic():
            row = InboundMessage.objects.create(
                channel=inbound.channel,
                event_id=event_id,
                received_at=now,
                patient=patient,
                sender=_address(inbound),
                sender_bidx=sender_index(inbound.channel, inbound.sender),
                text=text,
                truncated=truncated,
                assignee_id=assignee_id,
            )
    except IntegrityError:
        return None  # the same event again
    log.info("inbound %s kept as %s (patient %s)", event_id, row.uuid, row.patient_id)
    if patient is not None:
        postop_call_request(patient=patient, channel=inbound.channel, text=text, now=now)
    return row


def _asks_for_a_call(text: str) -> bool:
    normalised = "".join(unicodedata.normalize("NFKC", text).split()).upper()
    return normalised == POSTOP_CALL_DIGIT or any(word in normalised for word in POSTOP_CALL_WORDS)


def postop_call_request(
    *, patient: Patient, channel: str, text: str, now: datetime
) -> StaffTask | None:
    """A call task for `patient` when `text` asks for a call and answers a post-op check-in
    sent on `channel` lately; None otherwise. One task per check-in message."""
    if not _asks_for_a_call(text):
        return None
    checkin = (
        OutboxMessage.objects.filter(
            patient=patient,
            channel=channel,
            rule__kind=RuleKind.POSTOP,
            status__in=[Status.SENT, Status.DELIVERED],
            sent_at__gte=now - POSTOP_ANSWER_WINDOW,
        )
        .order_by("-sent_at")
        .first()
    )
    if checkin is None:
        return None
    today = timezone.localdate(now)
    task, _created = StaffTask.objects.get_or_create(
        kind=StaffTask.Kind.CALL_REQUESTED,
        message=checkin,
        defaults={
            "patient": patient,
            "procedure_id": checkin.procedure_id,
            "due_on": today,
            "until": today,
        },
    )
    return task


# --- the inbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationRow:
    """One line of the inbox: a patient and their messages' state."""

    patient: Patient
    last_at: datetime
    unread: int
    open: int
    assignee: User | None


@dataclass(frozen=True)
class UnknownSender:
    """Messages from an address that is no one's, or several patients'."""

    channel: str
    sender_bidx: str
    sender: str
    last_at: datetime
    count: int
    unread: int
    shared_by: int  # patients with this address (a family phone), 0 for none


def inbox_unread_count() -> int:
    """Unread messages in the inbox, known senders or not: one COUNT."""
    return InboundMessage.objects.filter(read_at__isnull=True, handled_at__isnull=True).count()


def inbox_conversations(*, show_all: bool = False, limit: int = 200) -> list[ConversationRow]:
    """The inbox's conversations, one per patient, newest first: those with open messages (or
    every one with `show_all`). Counts are SQL aggregates."""
    rows = InboundMessage.objects.filter(patient__isnull=False)
    if not show_all:
        rows = rows.filter(handled_at__isnull=True)
    latest_assignee = (
        InboundMessage.objects.filter(patient_id=OuterRef("patient_id"))
        .order_by("-received_at")
        .values("assignee_id")[:1]
    )
    grouped = list(
        rows.values("patient_id")
        .annotate(
            last_at=Max("received_at"),
            unread=Count("id", filter=Q(read_at__isnull=True)),
            open=Count("id", filter=Q(handled_at__isnull=True)),
            holder=Subquery(latest_assignee),
        )
        .order_by("-last_at")[:limit]
    )
    patients = Patient.objects.in_bulk([row["patient_id"] for row in grouped])
    users = User.objects.in_bulk([row["holder"] for row in grouped if row["holder"]])
    return [
        ConversationRow(
            patient=patients[row["patient_id"]],
            last_at=row["last_at"],
            unread=row["unread"],
            open=row["open"],
            assignee=users.get(row["holder"]),
        )
        for row in grouped
    ]


def inbox_unknown_senders(*, limit: int = 100) -> list[UnknownSender]:
    """Senders not linked to a patient, newest first, with their open messages."""
    grouped = list(
        InboundMessage.objects.filter(patient__isnull=True, handled_at__isnull=True)
        .values("channel", "sender_bidx")
        .annotate(
            last_at=Max("received_at"),
            count=Count("id"),
            unread=Count("id", filter=Q(read_at__isnull=True)),
            last_id=Max("id"),
        )
        .order_by("-last_at")[:limit]
    )
    senders = InboundMessage.objects.in_bulk([row["last_id"] for row in grouped])
    # How many patients have each sender's address: one query per channel, not per sender.
    shared: dict[tuple[str, str], int] = {}
    for channel, field in ADDRESS_INDEX.items():
        wanted = {r["sender_bidx"] for r in grouped if r["channel"] == channel and r["sender_bidx"]}
        if wanted:
            counts = (
                Patient.objects.filter(**{f"{field}_bidx__in": wanted}, erased_at__isnull=True)
                .values_list(f"{field}_bidx")
                .annotate(n=Count("id"))
                .order_by()
            )
            shared |= {(channel, bidx): n for bidx, n in counts}
    found = []
    for row in grouped:
        found.append(
            UnknownSender(
                channel=row["channel"],
                sender_bidx=row["sender_bidx"],
                sender=senders[row["last_id"]].sender,
                last_at=row["last_at"],
                count=row["count"],
                unread=row["unread"],
                shared_by=shared.get((row["channel"], row["sender_bidx"]), 0),
            )
        )
    return found


@dataclass(frozen=True)
class Entry:
    """One message in a conversation, either way."""

    at: datetime
    inbound: bool
    channel: str
    text: str
    status: str = ""  # our message's status, in words
    error: str = ""
    truncated: bool = False
    feedback: bool = False  # a low visit rating or a comment on the visit (surveys)


def conversation(*, patient: Patient, limit: int = 200) -> list[Entry]:
    """The patient's messages both ways across SMS and LINE, oldest first (the newest
    `limit` of each way). Our messages count from when they were sent, or queued."""
    rated = VisitRating.objects.filter(
        Q(low_rating_note=OuterRef("pk")) | Q(comment_message=OuterRef("pk"))
    )
    inbound = list(
        InboundMessage.objects.filter(patient=patient)
        .annotate(feedback=Exists(rated))
        .order_by("-received_at")[:limit]
    )
    outbound = list(OutboxMessage.objects.filter(patient=patient).order_by("-created_at")[:limit])
    entries = [
        Entry(
            at=row.received_at,
            inbound=True,
            channel=row.channel,
            text=row.text,
            truncated=row.truncated,
            feedback=row.feedback,
        )
        for row in inbound
    ] + [
        Entry(
            at=row.sent_at or row.created_at,
            inbound=False,
            channel=row.channel,
            text=row.text_for_staff(),
            status=row.get_status_display(),
            error=row.error if row.status in (Status.DROPPED, Status.FAILED) else "",
        )
        for row in outbound
    ]
    return sorted(entries, key=lambda entry: entry.at)


def conversation_read(*, patient: Patient, now: datetime) -> int:
    """Mark the patient's unread messages read; returns how many."""
    return InboundMessage.objects.filter(patient=patient, read_at__isnull=True).update(read_at=now)


def conversation_assign(*, patient: Patient, assignee: User | None) -> int:
    """Give the patient's open messages (and so the conversation) to `assignee`, or nobody."""
    return InboundMessage.objects.filter(patient=patient, handled_at__isnull=True).update(
        assignee=assignee
    )


def conversation_handle(*, patient: Patient, by: User | None, now: datetime) -> int:
    """Mark the patient's open messages handled (and read); returns how many."""
    rows = InboundMessage.objects.filter(patient=patient, handled_at__isnull=True)
    rows.filter(read_at__isnull=True).update(read_at=now)
    return rows.update(handled_at=now, handled_by=by)


class LinkRefused(Exception):
    """The sender can't be linked to that patient; the message says why, in words."""


def unknown_messages(*, channel: str, sender_bidx: str) -> QuerySet[InboundMessage]:
    """The unlinked messages of one unknown sender."""
    return InboundMessage.objects.filter(
        patient__isnull=True, channel=channel, sender_bidx=sender_bidx
    )


@transaction.atomic
def sender_link(
    *, channel: str, sender_bidx: str, patient: Patient, confirmed: bool, now: datetime
) -> int:
    """Attach an unknown sender's messages to `patient`; returns how many. By SMS the number
    must be the patient's phone, unless staff confirmed (they called, or checked it); a LINE
    sender always needs that confirmation (the patient page's LINE link makes it theirs for
    sending). Raises LinkRefused."""
    if patient.erased_at is not None:
        raise LinkRefused(_("This patient's contact data is erased."))
    if not sender_bidx:
        raise LinkRefused(_("This sender has no address to link."))
    matches = channel == Channel.SMS and patient.phone_bidx == sender_bidx
    if not matches and not confirmed:
        raise LinkRefused(
            _(
                "The sender's number is not this patient's phone: tick that you checked it is "
                "the patient before linking."
            )
            if channel == Channel.SMS
            else _("Tick that you checked this LINE user is the patient before linking.")
        )
    rows = unknown_messages(channel=channel, sender_bidx=sender_bidx)
    linked = rows.update(patient=patient)
    log.info("%d inbound messages of a %s sender linked to patient %s", linked, channel, patient.pk)
    return linked


# --- messages staff write ----------------------------------------------------------------------


class MessageRefused(Exception):
    """The message can't go; the message says why, in the clinic's language."""


def _staff_rule() -> Rule:
    rule, _created = Rule.objects.get_or_create(
        kind=RuleKind.STAFF,
        defaults={
            "name": "櫃台訊息 Staff message",
            "purpose": Purpose.CARE,
            "channel_order": list(REPLY_CHANNELS),
            "offsets": [0],
            "priority": 5,
        },
    )
    return rule


def staff_message_queue(
    *, patient: Patient, channel: str, body: str, now: datetime
) -> OutboxMessage:
    """Queue `body` from staff to `patient` on `channel` through the outbox: the gate checks it
    again when it goes, and the send window holds it until morning at night. The consent check
    is the gate's own (campaigns.policy.channel_decision), asked now so that staff see a
    refusal at once. Raises MessageRefused (consent, address, channel off, empty)."""
    # A browser sends a textarea's line breaks as CRLF; an SMS or LINE message wants LF.
    text, _shortened = text_clean(body.replace("\r\n", "\n"))
    if not text:
        raise MessageRefused(_("Write a message first."))
    if len(text) > MAX_REPLY_CHARS:
        raise MessageRefused(
            _("The message is too long: at most %(n)d characters.") % {"n": MAX_REPLY_CHARS}
        )
    if channel not in REPLY_CHANNELS:
        raise MessageRefused(_("Choose SMS or LINE."))
    message = OutboxMessage(
        rule=_staff_rule(),
        patient=patient,
        occurrence_key=f"staff:{uuid.uuid4().hex}",
        purpose=Purpose.CARE,
        channel=channel,
        channels_left=[],
        due_at=now,
        next_attempt_at=now,
        expires_at=now + STAFF_MESSAGE_LIFE,
        # When staff wrote it: the gate measures the 24-hour service window from here.
        anchor_at=now,
        body=text,
        priority=5,
        **channel_size(channel, text, patient.phone or ""),
    )
    decision = channel_decision(message)
    if not decision.allowed:
        code = decision.reason
        reason = SkipReason(code).label if code in SkipReason.values else code
        label = Channel(channel).label
        if code == SkipReason.NO_CONSENT:
            raise MessageRefused(
                _(
                    "Not sent by %(channel)s: the patient has not agreed to messages there, and "
                    "their last message on %(channel)s is more than %(hours)d hours old (or there "
                    "is none), so this is not an answer to it."
                )
                % {"channel": label, "hours": int(SERVICE_WINDOW.total_seconds() // 3600)}
            )
        raise MessageRefused(
            _("Not sent by %(channel)s: %(reason)s.") % {"channel": label, "reason": reason}
        )
    message.save()
    return message


def service_window_ends(*, patient: Patient, channel: str, now: datetime) -> datetime | None:
    """Until when staff may answer the patient on `channel` without consent for a purpose:
    SERVICE_WINDOW after their last message there, or None when that has passed."""
    last: datetime | None = InboundMessage.objects.filter(
        patient=patient, channel=channel, received_at__lte=now
    ).aggregate(last=Max("received_at"))["last"]
    if last is None or last + SERVICE_WINDOW <= now:
        return None
    return last + SERVICE_WINDOW


def next_send_at(*, now: datetime, profile: ClinicProfile) -> datetime | None:
    """When a message queued now can go: now inside the send window, else when it opens."""
    return fit(now, now + STAFF_MESSAGE_LIFE, profile)
