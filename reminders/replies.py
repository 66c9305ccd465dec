"""What patients send back: an opt-out, a LINE block, the answer to a confirmation request (a
reply code, or a LINE button: reminders.answers), or the LINE link code from the desk
(reminders.linking). Any other text is kept for the staff inbox (reminders.inbox).

Replies are matched to patients through the blind index of the sender's phone or LINE id (a
family may share one phone, so all of them). An opt-out takes effect at once, in the ledger.
"""

import logging
import unicodedata
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.models import RuleKind
from consent.models import Action, ConsentState, Purpose, Source
from consent.services import consent_record, consent_withdraw_all
from patients.models import Appointment, Patient
from reminders.answers import (
    CONFIRMATION_ANSWERS,
    POSTOP_ANSWERS,
    Answer,
    label,
    postback_parse,
    rating_of,
)
from reminders.channels.base import Inbound
from reminders.inbox import (
    POSTOP_ANSWER_WINDOW,
    POSTOP_CALL_DIGIT,
    inbound_keep,
    postop_call_request,
)
from reminders.linking import (
    LinkOutcome,
    code_candidates,
    line_account_follow,
    line_link_redeem,
)
from reminders.models import OutboxMessage, StaffTask, Status, WebhookEvent
from reminders.receipts import webhook_event_record
from surveys.services import (
    RATING_DIGITS,
    survey_comment,
    survey_is_open,
    survey_open,
    survey_rate,
)

log = logging.getLogger(__name__)

# What people type to stop texts, in Taiwan and in English.
STOP_WORDS = {"STOP", "UNSUBSCRIBE", "CANCEL", "取消", "退訂", "停止", "不要再傳"}
CONFIRM, CHANGE = "1", "2"
# A reply answers the confirmation request we sent in this many days before it.
ANSWER_WINDOW = timedelta(days=3)
ADDRESS_INDEX = {"sms": "phone", "line": "line_user_id"}
PROVIDER = {"sms": WebhookEvent.Provider.TWILIO_SMS, "line": WebhookEvent.Provider.LINE}


class ReplyOutcome(StrEnum):
    OPTED_OUT = "opted out"
    CONFIRMED = "confirmed"
    CHANGE_REQUESTED = "change requested"
    IGNORED = "ignored"
    REPLAYED = "already handled"
    TOO_OLD = "older than the replay window"
    # LINE only: the link code (reminders.linking), and a new follower we don't know yet.
    LINKED = LinkOutcome.LINKED.value
    WRONG_CODE = LinkOutcome.WRONG_CODE.value
    LINK_RATE_LIMITED = LinkOutcome.RATE_LIMITED.value
    GREETED = "greeted"
    NOT_TEXT = "not text"  # a sticker, a photo: asked to write in words
    KEPT = "kept for the inbox"
    # LINE buttons (reminders.answers).
    CALL_REQUESTED = "call requested"
    ANSWERED = "answered"
    REFUSED = "refused"
    # How was your visit? (surveys.services)
    RATED = "rated"
    COMMENTED = "commented"


def _normalise(text: str) -> str:
    # Full-width "１" from a Chinese keyboard is a "1"; case and spaces don't matter.
    return "".join(unicodedata.normalize("NFKC", text).split()).upper()


def _senders(inbound: Inbound) -> list[Patient]:
    field = ADDRESS_INDEX[inbound.channel]
    digest = Patient.index_of(field, inbound.sender)
    if not digest:
        return []
    return list(Patient.objects.filter(**{f"{field}_bidx": digest}, erased_at__isnull=True))


def _answered_request(patients: list[Patient], channel: str, now: datetime) -> OutboxMessage | None:
    """The newest confirmation request sent on `channel` to one of `patients` lately, whose
    appointment is still ahead; None if there is none to answer."""
    return (
        OutboxMessage.objects.filter(
            patient__in=patients,
            channel=channel,
            rule__asks_confirmation=True,
            status__in=[Status.SENT, Status.DELIVERED],
            sent_at__gte=now - ANSWER_WINDOW,
            appointment__starts_at__gt=now,
            appointment__status__in=[Appointment.Status.BOOKED, Appointment.Status.CONFIRMED],
        )
        .order_by("-sent_at")
        .first()
    )


def _withdraw_channel(patient: Patient, *, channel: str, source: str, evidence: str) -> None:
    withdrawn = consent_withdraw_all(
        patient=patient, source=source, channel=channel, evidence=evidence
    )
    if not withdrawn and not ConsentState.objects.filter(patient=patient, channel=channel).exists():
        # Nothing was granted on the channel: the STOP is recorded all the same, because an
        # answer to one of the patient's messages (allowed for 24 hours without consent,
        # campaigns.policy.service_reply) must stop at it.
        consent_record(
            patient=patient,
            purpose=Purpose.CARE,
            channel=channel,
            action=Action.WITHDRAW,
            source=source,
            evidence=evidence,
        )


# What is kept for the inbox: a text no keyword handled.
KEPT_AFTER = {"ignored", "greeted"}


@transaction.atomic
def reply_handle(
    *,
    inbound: Inbound,
    event_id: str,
    occurred_at: datetime | None = None,
    now: datetime | None = None,
) -> ReplyOutcome:
    """Act on one inbound event, `event_id` being the provider's id for it; returns what was
    done. The same event delivered again does nothing. A text no keyword handles is kept
    (encrypted) for the staff inbox; nothing else of the text is stored."""
    now = now or timezone.now()
    if occurred_at is not None and occurred_at < now - timedelta(days=settings.WEBHOOK_DEDUPE_DAYS):
        # The dedupe table has forgotten events this old, so it could not tell a replay.
        return ReplyOutcome.TOO_OLD
    if not webhook_event_record(provider=PROVIDER[inbound.channel], event_id=event_id, now=now):
        return ReplyOutcome.REPLAYED
    patients = _senders(inbound)
    done = _apply(inbound=inbound, event_id=event_id, now=now, patients=patients)
    if inbound.kind == "text" and done in KEPT_AFTER:
        kept = inbound_keep(inbound=inbound, patients=patients, event_id=event_id, now=now)
        if kept is not None and done == ReplyOutcome.IGNORED:
            # A text after a visit rating is its comment (and stays in the inbox as feedback).
            if survey_comment(kept=kept, now=now) is not None:
                return ReplyOutcome.COMMENTED
            return ReplyOutcome.KEPT
    return done


def _apply(
    *, inbound: Inbound, event_id: str, now: datetime, patients: list[Patient]
) -> ReplyOutcome:
    if inbound.channel == "line":
        if inbound.kind == "not_text":
            return ReplyOutcome.NOT_TEXT
        if inbound.kind == "text" and (candidates := code_candidates(inbound.text)):
            # A code in the text links whoever the code was made for, known sender or not (a
            # parent links a child's record from their own LINE).
            linked = line_link_redeem(
                sender=inbound.sender, candidates=candidates, event_id=event_id, now=now
            )
            return ReplyOutcome(linked.value)
        if not patients and inbound.kind in ("follow", "text"):
            return ReplyOutcome.GREETED  # tell them how to link
        if inbound.kind in ("follow", "unfollow"):
            line_account_follow(patients=patients, following=inbound.kind == "follow", now=now)
    if not patients:
        return ReplyOutcome.IGNORED
    if inbound.kind == "postback":
        return _postback(inbound=inbound, patients=patients, event_id=event_id, now=now)
    if inbound.kind == "unfollow":
        for patient in patients:
            _withdraw_channel(
                patient, channel="line", source=Source.LINE_FOLLOW, evidence="LINE unfollow"
            )
        return ReplyOutcome.OPTED_OUT
    if inbound.kind != "text":
        return ReplyOutcome.IGNORED
    text = _normalise(inbound.text)
    if text in STOP_WORDS:
        source = Source.SMS_KEYWORD if inbound.channel == "sms" else Source.PATIENT_REQUEST
        for patient in patients:
            _withdraw_channel(
                patient, channel=inbound.channel, source=source, evidence=f"replied {text}"
            )
        return ReplyOutcome.OPTED_OUT
    request = (
        _answered_request(patients, inbound.channel, now) if text in (CONFIRM, CHANGE) else None
    )
    if text in RATING_DIGITS:
        # A digit answers whichever was asked last: a confirmation request, a post-op check-in
        # ("3": need a call, reminders.inbox) or a survey.
        survey = survey_open(patients=patients, channel=inbound.channel, now=now)
        if (
            survey is not None
            and (request is None or (survey.sent_at or now) > (request.sent_at or now))
            and not _checkin_after(survey, patients=patients, now=now)
        ):
            survey_rate(
                message=survey,
                rating=RATING_DIGITS[text],
                sender=inbound.sender,
                event_id=event_id,
                now=now,
            )
            return ReplyOutcome.RATED
    if request is None:
        return ReplyOutcome.IGNORED
    return _answer_request(
        request, confirm=text == CONFIRM, via=Appointment.ConfirmedVia.REPLY, now=now
    )


def _checkin_after(survey: OutboxMessage, *, patients: list[Patient], now: datetime) -> bool:
    """Whether a post-op check-in still open went to `patients` on the survey's channel after
    the survey: a digit then answers the check-in."""
    return OutboxMessage.objects.filter(
        patient__in=patients,
        channel=survey.channel,
        rule__kind=RuleKind.POSTOP,
        status__in=[Status.SENT, Status.DELIVERED],
        sent_at__gt=survey.sent_at or now,
        sent_at__gte=now - POSTOP_ANSWER_WINDOW,
    ).exists()


def _answer_request(
    request: OutboxMessage, *, confirm: bool, via: str, now: datetime
) -> ReplyOutcome:
    """Confirm the appointment `request` asked about, or ask staff to call back to change it;
    the same for a reply code and a LINE button."""
    # The dashboard's "replied" step: the first answer counts, a later change of mind does not
    # move it.
    OutboxMessage.objects.filter(pk=request.pk, replied_at__isnull=True).update(replied_at=now)
    if confirm:
        # The appointment the request was about (OutboxMessage.appointment, reversed).
        Appointment.objects.filter(outboxmessage=request, status=Appointment.Status.BOOKED).update(
            status=Appointment.Status.CONFIRMED,
            confirmed_via=via,
            confirmed_at=now,
            updated_at=now,
        )
        return ReplyOutcome.CONFIRMED
    today = timezone.localdate(now)
    StaffTask.objects.get_or_create(
        kind=StaffTask.Kind.RESCHEDULE,
        message=request,
        defaults={"patient_id": request.patient_id, "due_on": today, "until": today},
    )
    return ReplyOutcome.CHANGE_REQUESTED


# --- LINE buttons --------------------------------------------------------------------------------


def _refused(event_id: str, why: str) -> ReplyOutcome:
    log.info("line postback %s refused: %s", event_id, why)
    return ReplyOutcome.REFUSED


def _postback(
    *, inbound: Inbound, patients: list[Patient], event_id: str, now: datetime
) -> ReplyOutcome:
    """A tapped button: the answer to one message we sent this sender on LINE. One of another
    patient, unknown, no longer open, or not a message that asks this, changes nothing."""
    parsed = postback_parse(inbound.postback)
    if parsed is None:
        return _refused(event_id, "data not ours")
    answer, message_id = parsed
    message = (
        OutboxMessage.objects.filter(
            uuid=message_id,
            channel="line",
            patient__in=patients,
            status__in=[Status.SENT, Status.DELIVERED],
        )
        .select_related("rule", "patient", "appointment")
        .first()
    )
    if message is None:
        return _refused(event_id, "no such message sent to this sender")
    if answer in CONFIRMATION_ANSWERS:
        return _postback_confirmation(message, answer=answer, event_id=event_id, now=now)
    if answer in POSTOP_ANSWERS:
        return _postback_postop(message, inbound, answer=answer, event_id=event_id, now=now)
    rating = rating_of(answer)
    if rating is None or message.rule.kind != RuleKind.VISIT_SURVEY:
        return _refused(event_id, f"message {message.uuid} asks no rating")
    if not survey_is_open(message, now=now):
        return _refused(event_id, f"survey {message.uuid} rated already or too old")
    survey_rate(message=message, rating=rating, sender=inbound.sender, event_id=event_id, now=now)
    return ReplyOutcome.RATED


def _postback_confirmation(
    message: OutboxMessage, *, answer: Answer, event_id: str, now: datetime
) -> ReplyOutcome:
    appointment = message.appointment
    if not (message.rule.kind == RuleKind.APPOINTMENT and message.rule.asks_confirmation):
        return _refused(event_id, f"message {message.uuid} asks no confirmation")
    if (
        appointment is None
        or appointment.status not in (Appointment.Status.BOOKED, Appointment.Status.CONFIRMED)
        or appointment.starts_at <= now
    ):
        return _refused(event_id, f"message {message.uuid} is about a past or cancelled visit")
    return _answer_request(
        message,
        confirm=answer == Answer.CONFIRM,
        via=Appointment.ConfirmedVia.LINE,
        now=now,
    )


def _postback_postop(
    message: OutboxMessage, inbound: Inbound, *, answer: Answer, event_id: str, now: datetime
) -> ReplyOutcome:
    if message.rule.kind != RuleKind.POSTOP:
        return _refused(event_id, f"message {message.uuid} is no post-op check-in")
    if message.sent_at is None or message.sent_at < now - POSTOP_ANSWER_WINDOW:
        return _refused(event_id, f"message {message.uuid} is too old to answer")
    OutboxMessage.objects.filter(pk=message.pk, replied_at__isnull=True).update(replied_at=now)
    if answer == Answer.FINE:
        return ReplyOutcome.ANSWERED
    # "Some pain" and "need a call" reach the inbox in the words the patient tapped (what LINE
    # showed in the chat), and a call is the same task a typed answer makes.
    said = label(answer, message.patient.preferred_language)
    inbound_keep(
        inbound=Inbound(channel="line", kind="text", sender=inbound.sender, text=said),
        patients=[message.patient],
        event_id=event_id,
        now=now,
    )
    if answer == Answer.NEED_CALL:
        postop_call_request(
            patient=message.patient, channel="line", text=POSTOP_CALL_DIGIT, now=now
        )
        return ReplyOutcome.CALL_REQUESTED
    return ReplyOutcome.ANSWERED
