"""The send gate, checked again just before a message leaves: the world may have moved since
it was planned (consent withdrawn, appointment moved, refill already picked up, night fell).

Reasons are written in the worker's language (the clinic's, LANGUAGE_CODE): staff read them."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import RuleKind, SkipReason
from campaigns.sendwindow import day_bounds, next_send_time
from consent.selectors import may_contact
from patients.models import Appointment, ClinicProfile
from reminders.models import OutboxMessage, Status

SENT = [Status.SENT, Status.DELIVERED, Status.UNKNOWN]
CAP_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Verdict:
    """`send`, or `wait` until `until`, or `drop` for `reason`, or `switch` channel (consent)."""

    action: str
    reason: str = ""
    until: datetime | None = None


SEND = Verdict("send")


def _subject_gone(message: OutboxMessage) -> str:
    """Why what the message says no longer holds (cancelled, moved, changed), or ""."""
    kind = message.rule.kind
    if kind == RuleKind.APPOINTMENT:
        appointment = message.appointment
        if appointment is None:
            return _("appointment removed")
        if appointment.status not in (Appointment.Status.BOOKED, Appointment.Status.CONFIRMED):
            return _("appointment %(status)s") % {"status": appointment.get_status_display()}
        if appointment.starts_at != message.anchor_at:
            return _("appointment rescheduled")
        if message.rule.asks_confirmation and appointment.status == Appointment.Status.CONFIRMED:
            return _("appointment already confirmed")
    elif kind in (RuleKind.REFILL_OPENS, RuleKind.REFILL_CLOSES):
        window = message.refill_window
        if window is None:
            return _("refill window removed")
        if window.picked_up_on:
            return _("refill already picked up")
        if not message.prescription.refill_reminders:
            return _("refill reminders turned off")
        # The text names the window's dates: planned as its opening and the end of its last day.
        if (message.anchor_at, message.expires_at) != (
            day_bounds(window.opens_on)[0],
            day_bounds(window.closes_on)[1],
        ):
            return _("refill window changed")
    elif kind == RuleKind.DOSE:
        prescription = message.prescription
        if not prescription.dose_reminders:
            return _("dose reminders turned off")
        dose_at = timezone.localtime(message.anchor_at)
        still_prescribed = prescription.start_date <= dose_at.date() <= prescription.end_date
        if not still_prescribed or dose_at.strftime("%H:%M") not in prescription.dose_times:
            return _("dose time changed")
    return ""


def message_gate(*, message: OutboxMessage, now: datetime, profile: ClinicProfile) -> Verdict:
    """What to do with a claimed message at `now`. Reads fresh data; writes nothing."""
    if now >= message.expires_at:
        return Verdict("drop", _("stale: no longer useful"))
    if not message.rule.enabled:
        # Staff who switch a rule off expect its pending messages to stop too.
        return Verdict("drop", _("rule switched off"))
    if reason := _subject_gone(message):
        return Verdict("drop", reason)
    decision = may_contact(
        patient=message.patient, purpose=message.purpose, channel=message.channel
    )
    if not decision.allowed:
        return Verdict("switch", str(SkipReason(decision.reason).label))
    if message.purpose == "relationship":
        recent = (
            OutboxMessage.objects.filter(
                patient_id=message.patient_id,
                purpose="relationship",
                status__in=SENT,
                sent_at__gte=now - CAP_WINDOW,
            )
            .exclude(pk=message.pk)
            .count()
        )
        if recent >= settings.RELATIONSHIP_MESSAGES_PER_30_DAYS:
            return Verdict("drop", _("frequency cap reached"))
    opens = next_send_time(now, profile)
    if opens > now:
        return _wait_or_stale(opens, message)
    gap = timedelta(minutes=settings.MESSAGE_GAP_MINUTES)
    last = (
        OutboxMessage.objects.filter(patient_id=message.patient_id, status__in=SENT)
        .exclude(pk=message.pk)
        .aggregate(last=Max("sent_at"))["last"]
    )
    if last and now < last + gap:
        # One message at a time: the next waits, in priority order, instead of piling up.
        return _wait_or_stale(next_send_time(last + gap, profile), message)
    return SEND


def _wait_or_stale(until: datetime, message: OutboxMessage) -> Verdict:
    if until >= message.expires_at:
        return Verdict("drop", _("stale: the send window opens too late"))
    return Verdict("wait", until=until)
