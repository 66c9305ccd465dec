"""What the front desk's day view reads: one day's appointments with their confirmation, their
reminders and whether any reminder can reach the patient at all, in a fixed number of queries
whatever the number of appointments."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import IntEnum, StrEnum
from typing import Any

import phonenumbers
from django.conf import settings
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import Rule, RuleKind, Skip, SkipReason
from campaigns.policy import channel_order_for, pick_channel
from campaigns.sendwindow import day_bounds
from consent.models import Channel, ConsentState, Purpose
from consent.selectors import consent_annotations
from patients.models import Appointment
from patients.selectors import closure_on as clinic_closure_on
from reminders.models import OutboxMessage, Status

# Only the facts the page shows are loaded: the encrypted phone, notes and IDs stay unread.
PATIENT_FIELDS = (
    "patient__id",
    "patient__uuid",  # the encrypted fields are bound to it
    "patient__chart_no",
    "patient__name",
    "patient__erased_at",
    "patient__preferred_channel",
)


class ReminderState(StrEnum):
    WAITING = "waiting"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"


_STATE_OF_STATUS = {
    Status.QUEUED: ReminderState.WAITING,
    Status.SENDING: ReminderState.SENDING,
    Status.SENT: ReminderState.SENT,
    Status.DELIVERED: ReminderState.DELIVERED,
    Status.FAILED: ReminderState.FAILED,
    Status.DROPPED: ReminderState.NOT_SENT,
    Status.UNKNOWN: ReminderState.UNKNOWN,
}


class Attention(IntEnum):
    """Where a row sorts in the day view: what the desk must act on comes first."""

    UNREACHABLE = 0  # not confirmed, and no reminder can reach the patient: phone them
    UNCONFIRMED = 1
    SETTLED = 2


class Order(StrEnum):
    ATTENTION = "attention"
    TIME = "time"


@dataclass(frozen=True)
class ReminderLine:
    """One reminder for an appointment, in words: what, on which channel, and how it went."""

    rule_name: str
    state: ReminderState
    label: str
    channel: str = ""
    at: datetime | None = None
    reason: str = ""

    @property
    def at_text(self) -> str:
        """When, as the desk reads it (3/9 15:20), in the clinic's zone."""
        return f"{self.at.month}/{self.at.day} {self.at:%H:%M}" if self.at else ""


@dataclass(frozen=True)
class DayRow:
    appointment: Appointment
    reachable: bool
    unreachable_reason: str
    reminders: tuple[ReminderLine, ...]
    time_text: str = ""  # the start in the clinic's zone, 09:30
    confirmed_text: str = ""  # how and when it was confirmed, in words
    # LINE consent is granted but no LINE account is linked: no LINE message can reach them.
    line_unlinked: bool = False

    @property
    def attention(self) -> Attention:
        status = self.appointment.status
        if status == Appointment.Status.BOOKED and not self.reachable:
            return Attention.UNREACHABLE
        if status == Appointment.Status.BOOKED:
            return Attention.UNCONFIRMED
        return Attention.SETTLED

    @property
    def reminder_failed(self) -> bool:
        return any(
            r.state in (ReminderState.FAILED, ReminderState.NOT_SENT) for r in self.reminders
        )

    @property
    def to_call(self) -> bool:
        """Booked and not confirmed, and either unreachable or its reminders did not get there."""
        return self.appointment.status == Appointment.Status.BOOKED and (
            not self.reachable or self.reminder_failed or not self.reminders
        )


@dataclass(frozen=True)
class Day:
    day: date
    rows: list[DayRow]
    doctors: list[str]
    departments: list[str]
    closure: str = ""  # why the clinic is closed that day, when it is
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def patient_ids(self) -> list[int]:
        return sorted({row.appointment.patient_id for row in self.rows})


def closure_on(day: date) -> str:
    """Why the clinic is closed on `day` (a holiday, a typhoon day, the doctor's leave), in
    words, or "" on an ordinary day. One query."""
    closure = clinic_closure_on(day)
    if closure is None:
        return ""
    kind = closure.get_kind_display()
    return f"{kind}（{closure.note}）" if closure.note else str(kind)


def _appointment_rules() -> list[Rule]:
    return list(
        Rule.objects.filter(kind=RuleKind.APPOINTMENT, enabled=True).only(
            "id", "name", "purpose", "channel_order", "kind"
        )
    )


def _reach_groups(rules: list[Rule]) -> dict[str, list[str]]:
    """Purpose → the channels the appointment rules of that purpose may use."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rule in rules:
        for channel in rule.channel_order:
            if channel not in groups[rule.purpose]:
                groups[rule.purpose].append(channel)
    if not groups:
        # No reminder rule is on: still tell the desk whom a care message could reach.
        groups[Purpose.CARE] = list(Channel.values)
    return groups


def _reach_annotations(groups: dict[str, list[str]]) -> dict[str, Any]:
    annotations: dict[str, Any] = {}
    for purpose, channels in groups.items():
        for key, expression in consent_annotations(
            purpose=purpose, channels=channels, patient_ref="patient_id"
        ).items():
            annotations[f"reach_{purpose}_{key}"] = expression
    return annotations


def _reach(
    appointment: Appointment, rules: list[Rule], groups: dict[str, list[str]]
) -> tuple[bool, str]:
    """Whether any appointment rule can reach the patient (the planner's own channel choice,
    on the annotated row), else the reason in words."""
    preferred = appointment.patient.preferred_channel
    checks: list[tuple[str, list[str]]] = [
        (rule.purpose, channel_order_for(rule, preferred)) for rule in rules
    ] or [(purpose, channels) for purpose, channels in groups.items()]
    reason = ""
    for purpose, order in checks:
        prefix = f"reach_{purpose}_"
        row = {
            key.removeprefix(prefix): value
            for key, value in vars(appointment).items()
            if key.startswith(prefix)
        }
        decision = pick_channel(row, order)
        if decision.allowed:
            return True, ""
        reason = reason or str(SkipReason(decision.reason).label)
    return False, reason


def _local(at: datetime | None) -> datetime | None:
    return timezone.localtime(at) if at else None


@dataclass(frozen=True)
class _Words:
    """The labels of one page, translated once rather than once per row."""

    status: dict[str, str]
    channel: dict[str, str]
    reason: dict[str, str]
    not_sent: str

    @classmethod
    def now(cls) -> "_Words":
        return cls(
            status={value: str(label) for value, label in Status.choices},
            channel={value: str(label) for value, label in Channel.choices},
            reason={value: str(label) for value, label in SkipReason.choices},
            not_sent=_("not sent"),
        )


def _message_line(message: OutboxMessage, words: _Words) -> ReminderLine:
    state = _STATE_OF_STATUS[Status(message.status)]
    when = {
        ReminderState.WAITING: message.next_attempt_at,
        ReminderState.DELIVERED: message.delivered_at or message.sent_at,
    }.get(state, message.sent_at)
    reason = message.error if state in (ReminderState.FAILED, ReminderState.NOT_SENT) else ""
    label = words.not_sent if state == ReminderState.NOT_SENT else words.status[message.status]
    return ReminderLine(
        rule_name=message.rule.name,
        state=state,
        label=label,
        channel=words.channel.get(message.channel, message.channel),
        at=_local(when),
        reason=reason,
    )


def _skip_line(skip: Skip, words: _Words) -> ReminderLine:
    return ReminderLine(
        rule_name=skip.rule.name,
        state=ReminderState.NOT_SENT,
        label=words.not_sent,
        at=_local(skip.at),
        reason=words.reason.get(skip.reason, skip.reason),
    )


def _appointment_id_of(occurrence_key: str) -> int | None:
    # Appointment rules key their occurrences "appointment:<id>:<start in UTC>".
    parts = occurrence_key.split(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _reminders(appointments: list[Appointment]) -> dict[int, list[ReminderLine]]:
    """Each appointment's reminders and skips, in two queries for the whole day."""
    ids = {a.pk for a in appointments}
    words = _Words.now()
    lines: dict[int, list[tuple[datetime, ReminderLine]]] = defaultdict(list)
    messages = (
        OutboxMessage.objects.filter(appointment_id__in=ids)
        .select_related("rule")
        .only(
            "id",
            "appointment_id",
            "status",
            "channel",
            "error",
            "due_at",
            "next_attempt_at",
            "sent_at",
            "delivered_at",
            "rule__id",
            "rule__name",
        )
        .order_by("due_at", "id")
    )
    for message in messages:
        assert message.appointment_id is not None  # noqa: S101 - filtered on it above
        lines[message.appointment_id].append((message.due_at, _message_line(message, words)))
    skips = (
        Skip.objects.filter(
            patient_id__in={a.patient_id for a in appointments},
            rule__kind=RuleKind.APPOINTMENT,
            occurrence_key__startswith="appointment:",
        )
        .select_related("rule")
        .only("id", "occurrence_key", "reason", "at", "rule__id", "rule__name")
        .order_by("at", "id")
    )
    for skip in skips:
        appointment_id = _appointment_id_of(skip.occurrence_key)
        if appointment_id in ids:
            lines[appointment_id].append((skip.at, _skip_line(skip, words)))
    return {
        pk: [line for _at, line in sorted(found, key=lambda item: item[0])]
        for pk, found in lines.items()
    }


def _line_unlinked() -> Exists:
    """Per appointment: its patient agreed to LINE messages but has no LINE account linked."""
    return Exists(
        ConsentState.objects.filter(
            patient_id=OuterRef("patient_id"),
            channel=Channel.LINE,
            granted=True,
            patient__line_user_id_bidx__isnull=True,
        )
    )


def day_queryset(day: date) -> QuerySet[Appointment]:
    start, end = day_bounds(day)
    return Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end)


def desk_day(
    *, day: date, doctor: str = "", department: str = "", order: Order = Order.ATTENTION
) -> Day:
    """The appointments on `day` (the clinic's zone) for the day view, filtered by doctor and
    department, what needs the desk first unless `order` is by time. Raises nothing."""
    rules = _appointment_rules()
    groups = _reach_groups(rules)
    on_day = day_queryset(day)
    choices = on_day.order_by().values_list("doctor", "department").distinct()
    doctors = sorted({d for d, _dept in choices})
    departments = sorted({dept for _d, dept in choices})
    appointments = on_day
    if doctor:
        appointments = appointments.filter(doctor=doctor)
    if department:
        appointments = appointments.filter(department=department)
    loaded = list(
        appointments.select_related("patient")
        .only(
            "id",
            "starts_at",
            "department",
            "doctor",
            "location",
            "status",
            "confirmed_via",
            "confirmed_at",
            "patient_id",
            *PATIENT_FIELDS,
        )
        .annotate(**{**_reach_annotations(groups), "line_unlinked": _line_unlinked()})
        .order_by("starts_at", "id")
    )
    reminders = _reminders(loaded)
    via = {value: str(label) for value, label in Appointment.ConfirmedVia.choices}
    rows = []
    for appointment in loaded:
        reachable, reason = _reach(appointment, rules, groups)
        confirmed = ""
        if appointment.confirmed_via:
            confirmed = via.get(appointment.confirmed_via, appointment.confirmed_via)
            if appointment.confirmed_at:
                at = timezone.localtime(appointment.confirmed_at)
                confirmed += f" {at.month}/{at.day} {at:%H:%M}"
        rows.append(
            DayRow(
                appointment=appointment,
                reachable=reachable,
                unreachable_reason=reason,
                reminders=tuple(reminders.get(appointment.pk, ())),
                time_text=f"{timezone.localtime(appointment.starts_at):%H:%M}",
                confirmed_text=confirmed,
                line_unlinked=bool(getattr(appointment, "line_unlinked", False)),
            )
        )
    if order == Order.ATTENTION:
        rows.sort(key=lambda row: (row.attention, row.appointment.starts_at, row.appointment.pk))
    counts = {status: 0 for status in Appointment.Status.values}
    for row in rows:
        counts[row.appointment.status] += 1
    counts["unreachable"] = sum(1 for row in rows if row.attention == Attention.UNREACHABLE)
    counts["to_call"] = sum(1 for row in rows if row.to_call)
    return Day(
        day=day,
        rows=rows,
        doctors=doctors,
        departments=departments,
        closure=closure_on(day),
        counts=counts,
    )


def phone_display(raw: str) -> str:
    """A phone number as the desk dials it: 0912 345 678 for Taiwan, international otherwise."""
    try:
        number = phonenumbers.parse(raw, settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return raw
    region = phonenumbers.region_code_for_number(number)
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if region == settings.PHONE_DEFAULT_REGION
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    return phonenumbers.format_number(number, style)
