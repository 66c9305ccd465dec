"""The outbox: claiming due messages, sending them once, and recovering from crashes.

A message moves queued → sending (claimed) → sent | queued (retry, wait, next channel) |
failed | dropped | unknown. The claim is one conditional UPDATE, so two workers never hold the
same row. An Attempt row is committed *before* the provider is called: if the process dies
mid-send, recovery finds the attempt without an outcome and, for SMS and e-mail (no
idempotency key), marks the message `unknown` for a person to check instead of sending it twice.
LINE pushes carry the message uuid as X-Line-Retry-Key, so those are safely retried.
"""

import logging
import time as clock
import uuid
from collections import Counter
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import DateTimeField, Exists, F, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.html import escape, linebreaks
from django.utils.translation import gettext as _

from campaigns.costs import channel_size
from campaigns.kinds import KINDS
from campaigns.models import SkipReason
from campaigns.planner import message_text
from campaigns.policy import Action, send_decision
from campaigns.templating import RenderedText, TemplateRenderError
from consent.models import Channel
from patients.models import ClinicProfile
from reminders.channels.base import ChannelError, OutcomeUnknown, OutgoingMessage, get_channel
from reminders.models import MESSAGE_ABOUT, Attempt, OutboxMessage, StaffTask, Status
from reminders.ratelimit import rate_limiter

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_MAX = timedelta(hours=1)
# Providers whose API dedupes a resend of the same message (LINE: X-Line-Retry-Key).
IDEMPOTENT_CHANNELS = {Channel.LINE}
IDEMPOTENCY_WINDOW = timedelta(hours=23)
ADDRESS: dict[str, str] = {
    Channel.SMS: "phone",
    Channel.LINE: "line_user_id",
    Channel.EMAIL: "email",
}
CLAIM_TRIES = 5


def messages_claim(*, now: datetime, limit: int) -> list[OutboxMessage]:
    """Take up to `limit` due messages for this caller alone, at most one per patient.

    An empty list means nothing is due (or other workers won every race for what is)."""
    busy = OutboxMessage.objects.filter(patient_id=OuterRef("patient_id"), status=Status.SENDING)
    due = (
        OutboxMessage.objects.filter(status=Status.QUEUED, next_attempt_at__lte=now)
        .exclude(Exists(busy))
        .order_by("priority", "next_attempt_at", "id")
    )
    for _try in range(CLAIM_TRIES):
        ids: list[int] = []
        patients: set[int] = set()
        for message_id, patient_id in due.values_list("id", "patient_id")[: limit * 2]:
            if patient_id not in patients and len(ids) < limit:
                patients.add(patient_id)
                ids.append(message_id)
        if not ids:
            return []
        token = uuid.uuid4().hex
        # The WHERE re-checks the status: of two workers racing for a row, exactly one flips it.
        if OutboxMessage.objects.filter(pk__in=ids, status=Status.QUEUED).update(
            status=Status.SENDING, claim=token, claimed_at=now
        ):
            break
        # Another worker read the same rows and took them all first. Reading again skips them:
        # returning nothing here would end this worker's run while messages are still due.
    else:
        return []
    return list(
        OutboxMessage.objects.filter(claim=token, status=Status.SENDING)
        .select_related("patient", "rule", *MESSAGE_ABOUT)
        .prefetch_related("rule__templates")  # a planned message's text is made from them
        .order_by("priority", "next_attempt_at", "id")
    )


def _finish(message: OutboxMessage, **changes: Any) -> None:
    for name, value in changes.items():
        setattr(message, name, value)
    message.claim = ""
    message.save(update_fields=[*changes, "claim"])


def _outgoing(message: OutboxMessage) -> OutgoingMessage:
    address = getattr(message.patient, ADDRESS[message.channel])
    html = linebreaks(escape(message.body)) if message.channel == Channel.EMAIL else ""
    return OutgoingMessage(
        id=message.uuid,
        channel=message.channel,
        to=address,
        body=message.body,
        subject=message.subject,
        html_body=html,
        rule_kind=message.rule.kind,
        asks_confirmation=message.rule.asks_confirmation,
        language=message.patient.preferred_language,
    )


class Outcome(StrEnum):
    """What one turn of `message_send` did with a message."""

    SENT = "sent"
    DROPPED = "dropped"
    WAITING = "waiting"
    RETRYING = "retrying"
    NEXT_CHANNEL = "next channel"
    FAILED = "failed"
    UNKNOWN = "unknown"


def message_send(*, message: OutboxMessage, now: datetime, profile: ClinicProfile) -> Outcome:
    """Gate, send and record one claimed message; returns what happened. Never raises for a
    provider failure: that is recorded on the message."""
    verdict = send_decision(message=message, now=now, profile=profile)
    if verdict.action == Action.DROP:
        _finish(message, status=Status.DROPPED, error=verdict.reason[:300])
        return Outcome.DROPPED
    if verdict.action == Action.WAIT:
        _finish(message, status=Status.QUEUED, next_attempt_at=verdict.until)
        return Outcome.WAITING
    if verdict.action == Action.SWITCH:
        reason = f"{Channel(message.channel).label}: {verdict.reason}"
        # Out of channels: dropped when consent alone stopped it; failed when a provider
        # already failed it on an earlier channel (a person may need to phone).
        tried = message.attempts_log.exists()
        exhausted = Status.FAILED if tried else Status.DROPPED
        return _next_channel(message, now=now, reason=reason, exhausted=exhausted)

    made: list[str] = []
    if not message.body:
        # A planned message carries no text (campaigns.planner): it is made now, for the
        # channel it goes on, and kept with the attempt below, so that a retry or a resend
        # after a crash sends the same words.
        text, why = _text_for(message, message.channel, now=now, profile=profile)
        if text is None:
            exhausted = Status.FAILED if message.attempts_log.exists() else Status.DROPPED
            return _next_channel(message, now=now, reason=why, exhausted=exhausted)
        for name, value in _text_fields(message, message.channel, text).items():
            setattr(message, name, value)
            made.append(name)
    try:
        # Nothing has left the machine if these fail (a missing address, a channel turned
        # off since the gate looked): a plain failure of this channel, never "maybe sent".
        outgoing = _outgoing(message)
        adapter = get_channel(message.channel)
    except Exception as exc:  # noqa: BLE001 - any of them means the same: not sent
        log.warning("message %s not handed over: %s", message.pk, type(exc).__name__)
        reason = _("%(channel)s: not sent (%(error)s)") % {
            "channel": Channel(message.channel).label,
            "error": type(exc).__name__,
        }
        return _next_channel(message, now=now, reason=reason, exhausted=Status.FAILED)
    with transaction.atomic():  # one commit, before anything leaves the machine
        if made:
            message.save(update_fields=made)
        attempt = Attempt.objects.create(message=message, channel=message.channel, started_at=now)
    try:
        provider_id = adapter.send(outgoing)
    except OutcomeUnknown as exc:
        return _unknown(message, attempt, str(exc), now=now)
    except ChannelError as exc:
        _close(
            attempt, Attempt.Outcome.PERMANENT if exc.permanent else Attempt.Outcome.TRANSIENT, exc
        )
        if exc.permanent:
            reason = f"{Channel(message.channel).label}: {exc}"
            return _next_channel(message, now=now, reason=reason, exhausted=Status.FAILED)
        return _retry_later(message, now=now, error=exc)
    # One commit for both: a crash between them left a message still `sending` whose attempt
    # had an outcome, which recovery reads as "never handed over" and sends again.
    with transaction.atomic():
        _close(attempt, Attempt.Outcome.SENT)
        _finish(
            message,
            status=Status.SENT,
            provider_id=provider_id[:100],
            sent_at=now,
            attempts=message.attempts + 1,
        )
        # Here, not at the top: receipts builds on this module's _finish and _next_channel.
        from reminders.receipts import receipts_apply_parked

        receipts_apply_parked(message=message)  # reports that came before this commit
    return Outcome.SENT


def _close(attempt: Attempt, outcome: str, error: Exception | None = None) -> None:
    # finished_at is a measurement (how long the provider took), not a decision: the clock.
    attempt.outcome, attempt.finished_at = outcome, timezone.now()
    attempt.error = str(error or "")[:300]
    attempt.save(update_fields=["outcome", "finished_at", "error"])


def _unknown(message: OutboxMessage, attempt: Attempt, error: str, *, now: datetime) -> Outcome:
    with transaction.atomic():
        _close(attempt, Attempt.Outcome.UNKNOWN, Exception(error))
        _finish(message, status=Status.UNKNOWN, attempts=message.attempts + 1, error=error[:300])
        _task_for_staff(message, StaffTask.Kind.REVIEW_UNKNOWN, now=now)
    return Outcome.UNKNOWN


def _task_for_staff(message: OutboxMessage, kind: str, *, now: datetime) -> None:
    today = timezone.localdate(now)
    StaffTask.objects.get_or_create(
        kind=kind,
        message=message,
        defaults={"patient_id": message.patient_id, "due_on": today, "until": today},
    )


def _retry_later(message: OutboxMessage, *, now: datetime, error: ChannelError) -> Outcome:
    """Try this channel again after a backoff; once its tries run out, or the next try would
    come too late, go on to the next channel as after a permanent error."""
    attempts = message.attempts + 1
    # Counted per channel: the next channel gets its own tries.
    tries_here = message.attempts_log.filter(channel=message.channel).count()
    delay = min(BACKOFF_BASE * 2 ** (tries_here - 1), BACKOFF_MAX)
    if error.retry_after:
        delay = max(delay, timedelta(seconds=error.retry_after))
    retry_at = now + delay
    if tries_here >= MAX_ATTEMPTS or retry_at >= message.expires_at:
        message.attempts = attempts
        reason = _("%(channel)s: gave up after %(count)d tries (%(error)s)") % {
            "channel": Channel(message.channel).label,
            "count": tries_here,
            "error": error,
        }
        return _next_channel(message, now=now, reason=reason, exhausted=Status.FAILED)
    _finish(
        message,
        status=Status.QUEUED,
        attempts=attempts,
        next_attempt_at=retry_at,
        error=str(error)[:300],
    )
    return Outcome.RETRYING


def _next_channel(
    message: OutboxMessage, *, now: datetime, reason: str, exhausted: Status
) -> Outcome:
    """Fall through to the next channel of the rule that has a text; when none is left the
    message ends as `exhausted` (dropped when consent stopped it, failed when providers did),
    and a message a person must not miss (a visit, a post-op check-in) becomes a call task.
    The gate checks consent for the new channel when the message comes round again."""
    # Keep why each earlier channel was passed over: staff read the whole story on the row.
    reason = "; ".join(filter(None, [message.error, reason]))
    remaining = list(message.channels_left)
    while remaining:
        channel = remaining.pop(0)
        text, why = _text_for(message, channel, now=now)
        if text is None:
            reason = f"{reason}; {why}"
            continue
        _finish(
            message,
            channel=channel,
            channels_left=remaining,
            **_text_fields(message, channel, text),
            status=Status.QUEUED,
            attempts=message.attempts,
            next_attempt_at=now,
            error=reason[-300:],
        )
        return Outcome.NEXT_CHANNEL
    with transaction.atomic():
        _finish(message, status=exhausted, attempts=message.attempts, error=reason[-300:])
        if exhausted == Status.FAILED and KINDS[message.rule.kind].call_if_undeliverable:
            _task_for_staff(message, StaffTask.Kind.CALL_UNREACHED, now=now)
    return Outcome(exhausted)


def _text_for(
    message: OutboxMessage, channel: str, *, now: datetime, profile: ClinicProfile | None = None
) -> tuple[RenderedText | None, str]:
    """The text of `message` on `channel`; or None and why not, in words for staff that never
    quote patient data."""
    try:
        text = message_text(message, channel, now=now, profile=profile)
    except TemplateRenderError as error:
        # Its words never quote patient data; the log names ids only.
        log.warning(
            "message %s (rule %s, patient %s): no %s text: %s",
            message.pk,
            message.rule_id,
            message.patient_id,
            channel,
            error.failure,
        )
        return None, f"{Channel(channel).label}: {error}"
    if text is None:
        return None, f"{Channel(channel).label}: {SkipReason.NO_TEMPLATE.label}"
    return text, ""


def _text_fields(message: OutboxMessage, channel: str, text: RenderedText) -> dict[str, Any]:
    """The fields of `message` that go with its `text` on `channel`: the text, and what it
    costs there (SMS segments, the phone's country)."""
    return {
        "subject": text.subject,
        "body": text.body,
        **channel_size(channel, text.body, message.patient.phone),
    }


def _resend_is_deduped(message: OutboxMessage, now: datetime) -> bool:
    """Whether the provider will drop a resend of `message` as a duplicate."""
    if message.channel not in IDEMPOTENT_CHANNELS:
        return False
    first = message.attempts_log.filter(channel=message.channel).order_by("started_at").first()
    # LINE remembers a retry key for 24 hours only.
    return first is None or now - first.started_at < IDEMPOTENCY_WINDOW


def messages_recover(*, now: datetime) -> Counter[str]:
    """Settle messages whose sender died mid-claim (held past DISPATCH_CLAIM_LEASE_SECONDS)."""
    results: Counter[str] = Counter()
    lease = timedelta(seconds=settings.DISPATCH_CLAIM_LEASE_SECONDS)
    stuck = OutboxMessage.objects.filter(status=Status.SENDING, claimed_at__lt=now - lease)
    for message in stuck.select_related("patient"):
        # Only if the claim is still exactly as read: a live sender renews it before each send
        # (see _renew_claim), and then this update matches nothing.
        held = OutboxMessage.objects.filter(
            pk=message.pk, status=Status.SENDING, claim=message.claim, claimed_at=message.claimed_at
        )
        started = message.attempts_log.filter(outcome=Attempt.Outcome.STARTED).last()
        with transaction.atomic():
            if started is None or _resend_is_deduped(message, now):
                # Nothing reached a provider, or the provider dedupes a resend: try again.
                if not held.update(status=Status.QUEUED, claim="", next_attempt_at=now):
                    continue
                if started is not None:
                    _close(
                        started, Attempt.Outcome.UNKNOWN, Exception(_("sender died; sent again"))
                    )
                results["requeued"] += 1
            else:
                error = _("sender died during the send; check with the provider")
                if not held.update(
                    status=Status.UNKNOWN, claim="", attempts=F("attempts") + 1, error=error
                ):
                    continue
                _close(started, Attempt.Outcome.UNKNOWN, Exception(error))
                _task_for_staff(message, StaffTask.Kind.REVIEW_UNKNOWN, now=now)
                results[Status.UNKNOWN] += 1
    return results


def _renew_claim(message: OutboxMessage, now: datetime) -> bool:
    """Refresh this run's hold on `message` just before sending it; False when recovery took it
    back meanwhile (this run was slower than the lease), so someone else may be sending it."""
    message.claimed_at = now
    return bool(
        OutboxMessage.objects.filter(
            pk=message.pk, status=Status.SENDING, claim=message.claim
        ).update(claimed_at=now)
    )


def messages_dispatch(*, batch_size: int = 50, time_budget: float = 50.0) -> Counter[str]:
    """Send what is due until nothing is or `time_budget` seconds have passed."""
    deadline = clock.monotonic() + time_budget
    results = messages_recover(now=timezone.now())
    profile = ClinicProfile.load()
    limiter = rate_limiter()
    while clock.monotonic() < deadline:
        claimed = messages_claim(now=timezone.now(), limit=batch_size)
        if not claimed:
            break
        for index, message in enumerate(claimed):
            if clock.monotonic() >= deadline:
                _release(claimed[index:])
                break
            try:
                limiter.wait(message.channel)
            except Exception:
                # No slot, no send (the shared limiter's Redis is unreachable): the rest of
                # the batch goes back to the queue untouched, and the run ends loudly.
                _release(claimed[index:])
                raise
            now = timezone.now()
            if not _renew_claim(message, now):
                results["claim lost"] += 1
                continue
            try:
                results[message_send(message=message, now=now, profile=profile)] += 1
            except Exception:
                # The message stays `sending`; recovery settles it after the lease, as if this
                # worker had died (unknown if it may have reached the provider). The rest of the
                # batch still goes out.
                log.exception("dispatching message %s failed", message.pk)
                results["error"] += 1
    return results


def _release(messages: list[OutboxMessage]) -> None:
    """Hand back claimed messages this run won't reach (no attempt was made on them)."""
    OutboxMessage.objects.filter(
        pk__in=[m.pk for m in messages],
        status=Status.SENDING,
        claim__in={m.claim for m in messages},
    ).update(status=Status.QUEUED, claim="")


def messages_settle_unknown(
    *, message_ids: list[int], sent: bool, actor: AbstractBaseUser, now: datetime
) -> int:
    """Record what staff confirmed with the provider about messages whose outcome was unknown.

    Only messages still `unknown` change; returns how many did. Their review tasks are closed.
    """
    verdict = "sent" if sent else "not sent"
    note = f"confirmed {verdict} with the provider by {actor.get_username()}"
    with transaction.atomic():
        ids = list(
            OutboxMessage.objects.select_for_update()
            .filter(pk__in=message_ids, status=Status.UNKNOWN)
            .values_list("pk", flat=True)
        )
        if sent:
            # The provider took it when it was last handed over, not when someone checked.
            last_try = (
                Attempt.objects.filter(message=OuterRef("pk"))
                .order_by("-started_at")
                .values("started_at")[:1]
            )
            changes = {
                "status": Status.SENT,
                "sent_at": Coalesce(Subquery(last_try), Value(now), output_field=DateTimeField()),
            }
        else:
            changes = {"status": Status.FAILED}
        OutboxMessage.objects.filter(pk__in=ids).update(**changes, error=note[:300])
        StaffTask.objects.filter(
            kind=StaffTask.Kind.REVIEW_UNKNOWN, message_id__in=ids, done_at__isnull=True
        ).update(done_at=now)
    log.info("%d unknown message(s) settled as %s by user %s", len(ids), verdict, actor.pk)
    return len(ids)


def tasks_mark_done(*, task_ids: list[int], now: datetime) -> int:
    """Close the given staff tasks that are still open; returns how many were."""
    return StaffTask.objects.filter(pk__in=task_ids, done_at__isnull=True).update(done_at=now)
