"""What patients send back: an opt-out, a LINE block, or the answer to a confirmation request.

Replies are matched to patients through the blind index of the sender's phone or LINE id (a
family may share one phone, so all of them). An opt-out takes effect at once, in the ledger.
"""

import unicodedata
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from consent.models import Source
from consent.services import consent_withdraw_all
from patients.models import Appointment, Patient
from reminders.channels.base import Inbound
from reminders.models import OutboxMessage, StaffTask, Status

# What people type to stop texts, in Taiwan and in English.
STOP_WORDS = {"STOP", "UNSUBSCRIBE", "CANCEL", "取消", "退訂", "停止", "不要再傳"}
CONFIRM, CHANGE = "1", "2"
# A reply answers the confirmation request we sent in this many days before it.
ANSWER_WINDOW = timedelta(days=3)
ADDRESS_INDEX = {"sms": "phone", "line": "line_user_id"}


def _normalise(text: str) -> str:
    # Full-width "１" from a Chinese keyboard is a "1"; case and spaces don't matter.
    return "".join(unicodedata.normalize("NFKC", text).split()).upper()


def _senders(inbound: Inbound) -> list[Patient]:
    field = ADDRESS_INDEX[inbound.channel]
    digest = Patient.index_of(field, inbound.sender)
    if not digest:
        return []
    return list(Patient.objects.filter(**{f"{field}_bidx": digest}, erased_at__isnull=True))


def _answered_request(patients: list[Patient], channel: str, now: datetime):
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
        .select_related("appointment")
        .order_by("-sent_at")
        .first()
    )


@transaction.atomic
def reply_handle(*, inbound: Inbound, now: datetime | None = None) -> str:
    """Act on one inbound event; returns what was done ("opted out", "confirmed",
    "change requested", or "ignored"). Never stores the text itself."""
    now = now or timezone.now()
    patients = _senders(inbound)
    if not patients:
        return "ignored"
    if inbound.kind == "unfollow":
        for patient in patients:
            consent_withdraw_all(
                patient=patient, source=Source.LINE_FOLLOW, channel="line", evidence="LINE unfollow"
            )
        return "opted out"
    if inbound.kind != "text":
        return "ignored"
    text = _normalise(inbound.text)
    if text in STOP_WORDS:
        source = Source.SMS_KEYWORD if inbound.channel == "sms" else Source.PATIENT_REQUEST
        for patient in patients:
            consent_withdraw_all(
                patient=patient, source=source, channel=inbound.channel, evidence=f"replied {text}"
            )
        return "opted out"
    if text not in (CONFIRM, CHANGE):
        return "ignored"
    request = _answered_request(patients, inbound.channel, now)
    if request is None:
        return "ignored"
    appointment = request.appointment
    if text == CONFIRM:
        Appointment.objects.filter(pk=appointment.pk, status=Appointment.Status.BOOKED).update(
            status=Appointment.Status.CONFIRMED, updated_at=now
        )
        return "confirmed"
    today = timezone.localdate(now)
    StaffTask.objects.get_or_create(
        kind=StaffTask.Kind.RESCHEDULE,
        message=request,
        defaults={"patient_id": request.patient_id, "due_on": today, "until": today},
    )
    return "change requested"
