"""Data that does not grow forever: what the outbox no longer needs is erased, in batches.

Medical records in Taiwan are kept at least seven years (醫療法 第70條), and so are the audit
log and the consent ledger, which say who saw a record and what the patient agreed to: both are
append-only (the database refuses to delete from them) and nothing here touches them, nor
visits, prescriptions, procedures or appointments. What goes, each after its own setting (days;
0 keeps it forever):
- RETAIN_MESSAGE_TEXT_DAYS: the words of a message that is final (sent, delivered, failed,
  dropped, unknown): subject, body and the fallback texts. The row stays, so the patient page,
  the dashboard's figures and the cost still show who got which message when, on which channel.
- RETAIN_ATTEMPTS_DAYS: the log of hand-overs to providers, for final messages.
- RETAIN_SKIPS_DAYS: the record of why a patient was not sent a message.
- RETAIN_INBOX_TEXT_DAYS: the words patients wrote to the clinic (the staff inbox), and the
  comment kept with a visit rating (surveys). The row stays: who wrote when, on which channel,
  and whether staff handled it; the rating stays.
Early delivery reports never applied are dropped with the webhook dedupe table
(WEBHOOK_DEDUPE_DAYS), which the webhook cleanup task already forgets.

Each batch is its own short transaction, so the job can be stopped at any moment and run again.
"""

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Model, Q, QuerySet

from campaigns.models import Skip
from reminders.models import FINAL, Attempt, InboundMessage, OutboxMessage
from surveys.models import VisitRating

BATCH = 2000


def _in_batches(
    candidates: QuerySet[Any], act: Callable[[QuerySet[Any]], int], *, batch: int
) -> int:
    model: type[Model] = candidates.model
    done = 0
    while True:
        ids = list(candidates.values_list("pk", flat=True)[:batch])
        if not ids:
            return done
        with transaction.atomic():
            done += act(model._default_manager.filter(pk__in=ids))


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def retention_apply(*, now: datetime, batch: int = BATCH) -> Counter[str]:
    """Erase what is past its retention period; returns how many rows of each kind."""
    done: Counter[str] = Counter()
    if cutoff := _cutoff(now, settings.RETAIN_MESSAGE_TEXT_DAYS):
        texts = OutboxMessage.objects.filter(status__in=FINAL, due_at__lt=cutoff).exclude(
            Q(body="") & Q(subject="")
        )
        done["message texts"] = _in_batches(
            texts, lambda rows: rows.update(body="", subject=""), batch=batch
        )
    if cutoff := _cutoff(now, settings.RETAIN_ATTEMPTS_DAYS):
        attempts = Attempt.objects.filter(started_at__lt=cutoff, message__status__in=FINAL)
        done["attempts"] = _in_batches(attempts, lambda rows: rows.delete()[0], batch=batch)
    if cutoff := _cutoff(now, settings.RETAIN_SKIPS_DAYS):
        skips = Skip.objects.filter(at__lt=cutoff)
        done["skips"] = _in_batches(skips, lambda rows: rows.delete()[0], batch=batch)
    if cutoff := _cutoff(now, settings.RETAIN_INBOX_TEXT_DAYS):
        inbox = InboundMessage.objects.filter(received_at__lt=cutoff).exclude(text="")
        done["inbox texts"] = _in_batches(
            inbox, lambda rows: rows.update(text="", truncated=False), batch=batch
        )
        comments = VisitRating.objects.filter(commented_at__lt=cutoff).exclude(comment="")
        done["visit comments"] = _in_batches(
            comments, lambda rows: rows.update(comment=""), batch=batch
        )
    return done
