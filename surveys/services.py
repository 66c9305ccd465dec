"""How was your visit? The patient's answer to the survey (campaigns.kinds VISIT_SURVEY): a
1-5 rating by LINE quick reply (reminders.answers) or an SMS digit, then an optional comment.

An answer goes to the most recent open survey message of that patient on that channel within
SURVEY_ANSWER_WINDOW (open: sent and not rated yet). A rating at or below SURVEY_LOW_RATING,
and every comment, reach the staff inbox (reminders.inbox) as feedback to follow up. Called by
reminders.replies inside the transaction that applies the webhook event, once per event.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from campaigns.models import RuleKind
from patients.models import Patient, Visit
from reminders.channels.base import Inbound
from reminders.inbox import inbound_keep
from reminders.models import InboundMessage, OutboxMessage, Status
from surveys.models import VisitRating

log = logging.getLogger(__name__)

# A rating answers a survey sent this long ago at most; a comment follows its rating within it.
SURVEY_ANSWER_WINDOW = timedelta(days=7)
RATING_DIGITS = {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
OCCURRENCE_PREFIX = "survey:visit:"  # campaigns.kinds._visit_survey's occurrence key


def _open_surveys(now: datetime) -> QuerySet[OutboxMessage]:
    return OutboxMessage.objects.filter(
        rule__kind=RuleKind.VISIT_SURVEY,
        status__in=[Status.SENT, Status.DELIVERED],
        sent_at__gte=now - SURVEY_ANSWER_WINDOW,
        visit_rating__isnull=True,
    )


def survey_open(*, patients: list[Patient], channel: str, now: datetime) -> OutboxMessage | None:
    """The newest survey sent on `channel` to one of `patients` lately and not rated yet."""
    return (
        _open_surveys(now)
        .filter(patient__in=patients, channel=channel)
        .select_related("patient")
        .order_by("-sent_at")
        .first()
    )


def survey_is_open(message: OutboxMessage, *, now: datetime) -> bool:
    """Whether `message` is a survey that can still be rated."""
    return _open_surveys(now).filter(pk=message.pk).exists()


def _visit_of(message: OutboxMessage) -> Visit | None:
    visit_id = message.occurrence_key.removeprefix(OCCURRENCE_PREFIX)
    return Visit.objects.filter(pk=int(visit_id)).first() if visit_id.isdigit() else None


def survey_rate(
    *, message: OutboxMessage, rating: int, sender: str, event_id: str, now: datetime
) -> VisitRating | None:
    """Record `rating` (1-5) for the survey `message`; None when it was rated already. A low
    rating is put in the inbox for staff to follow up."""
    visit = _visit_of(message)
    row, created = VisitRating.objects.get_or_create(
        message=message,
        defaults={
            "patient_id": message.patient_id,
            "visit": visit,
            "channel": message.channel,
            "doctor": visit.doctor if visit else "",
            "department": visit.department if visit else "",
            "rating": rating,
            "rated_at": now,
        },
    )
    if not created:
        return None
    OutboxMessage.objects.filter(pk=message.pk, replied_at__isnull=True).update(replied_at=now)
    log.info("survey %s rated %s (patient %s)", message.uuid, rating, message.patient_id)
    if rating <= settings.SURVEY_LOW_RATING:
        note = _("Visit rating: %(rating)d of 5") % {"rating": rating}
        row.low_rating_note = inbound_keep(
            inbound=Inbound(channel=message.channel, kind="text", sender=sender, text=note),
            patients=[message.patient],
            event_id=event_id,
            now=now,
        )
        row.save(update_fields=["low_rating_note"])
    return row


def survey_comment(*, kept: InboundMessage, now: datetime) -> VisitRating | None:
    """Attach the text `kept` for the inbox to its sender's latest rating on that channel
    within the window that has no comment yet; None when there is none."""
    if kept.patient_id is None:
        return None
    row = (
        VisitRating.objects.filter(
            patient_id=kept.patient_id,
            channel=kept.channel,
            rated_at__gte=now - SURVEY_ANSWER_WINDOW,
            commented_at__isnull=True,
        )
        .order_by("-rated_at")
        .first()
    )
    if row is None:
        return None
    row.comment, row.commented_at, row.comment_message = kept.text, now, kept
    row.save(update_fields=["comment", "commented_at", "comment_message"])
    return row


def feedback_ids(messages: QuerySet[InboundMessage]) -> set[int]:
    """Which of `messages` are visit feedback (a low rating or a comment): one query."""
    low = (
        VisitRating.objects.filter(low_rating_note__in=messages)
        .order_by()
        .values_list("low_rating_note_id", flat=True)
    )
    commented = (
        VisitRating.objects.filter(comment_message__in=messages)
        .order_by()
        .values_list("comment_message_id", flat=True)
    )
    return {pk for pk in low.union(commented) if pk is not None}
