"""The send policy, in one place, with its two faces side by side.

`plan_decision` is the set-based face: the planner asks it about each row of a rule's due set,
whose consent, contact points and recent messages were annotated in the same query (the
`*_annotations` functions below). `send_decision` is the per-row face: the gate asks it about one
claimed message just before it leaves, reading fresh data. Both apply the same checks, in the
same order, with the same reasons: erased, already confirmed, frequency cap, consent and contact
point on a configured channel, then the send window (closed days, stale). The planner alone
knows the audience; the gate alone knows whether what the text says still holds, whether the
rule was switched off, and the gap between two messages to one patient.
tests/campaigns/test_policy.py checks that both faces answer the same on the same data.
"""

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import (
    BigIntegerField,
    Count,
    Expression,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Cast, Coalesce
from django.db.models.lookups import LessThan
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.kinds import KINDS, Due, Row
from campaigns.models import Rule, RuleKind, SkipReason
from campaigns.sendwindow import at_local, fit
from consent.models import ConsentState, Purpose
from consent.selectors import (
    Decision,
    choose_channel,
    consent_annotations,
    has_contact_point,
    may_contact,
)
from patients.models import Appointment, ClinicProfile, Patient, age_on
from reminders.channels.base import channel_configured
from reminders.models import MESSAGE_ABOUT, GroupSend, InboundMessage, OutboxMessage, Status

CAP_WINDOW = timedelta(days=30)
# A staff message written within this long after the patient's own message on that channel
# answers it: service, which needs no consent for a purpose, only that the channel was not
# withdrawn (STOP, a LINE block).
SERVICE_WINDOW = timedelta(hours=24)
# Messages that count towards the cap: those on their way and those that (may have) arrived.
COUNTED = [Status.QUEUED, Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNKNOWN]
SENT = [Status.SENT, Status.DELIVERED, Status.UNKNOWN]


class Action(StrEnum):
    SEND = "send"
    WAIT = "wait"  # until `until`: night, a closed day, or the gap after the last message
    DROP = "drop"  # for good, for `reason`
    SWITCH = "switch"  # this channel may not be used (consent, address, not configured)


@dataclass(frozen=True)
class Verdict:
    """What the gate decided for one message."""

    action: Action
    reason: str = ""  # for staff, in the clinic's language
    code: SkipReason | None = None  # the same reason as the planner would record, if it has one
    until: datetime | None = None


@dataclass(frozen=True)
class Planned:
    """What the planner decided for one due occurrence: a channel and time, or a skip."""

    channel: str = ""
    send_at: datetime | None = None
    skip: SkipReason | None = None


SEND = Verdict(Action.SEND)


# --- the frequency cap ---------------------------------------------------------------------------


def _counted_messages(at: datetime) -> QuerySet[OutboxMessage]:
    # A message counts at the time it went out, or, not sent yet, at the time it is due.
    return OutboxMessage.objects.alias(when=Coalesce("sent_at", "due_at")).filter(
        purpose=Purpose.RELATIONSHIP,
        status__in=COUNTED,
        when__gt=at - CAP_WINDOW,
        when__lte=at,
    )


def cap_annotation(*, patient_ref: str, at: datetime) -> Subquery:
    """Set-based: how many relationship messages count against the cap at `at`."""
    return Subquery(
        _counted_messages(at)
        .filter(patient_id=OuterRef(patient_ref))
        .order_by()
        .values("patient_id")
        .annotate(n=Count("id"))
        .values("n")
    )


def cap_count(*, message: OutboxMessage, at: datetime) -> int:
    """Per row: the same count for `message`'s patient, not counting `message` itself."""
    return (
        _counted_messages(at).filter(patient_id=message.patient_id).exclude(pk=message.pk).count()
    )


def over_cap(purpose: str, count: int | None) -> bool:
    return purpose == Purpose.RELATIONSHIP and (count or 0) >= (
        settings.RELATIONSHIP_MESSAGES_PER_30_DAYS
    )


# --- the holdout --------------------------------------------------------------------------------
# A rule with holdout_percent p sends nothing to a stable p % of its patients, the comparison
# group of the dashboard. Who is held out is a hash of (patient id, rule id) computed the same in
# SQL (the planner, the dashboard's set-based comparison) and in Python (the gate), so it must be
# plain integer arithmetic both SQLite and PostgreSQL do exactly: no md5 (SQLite has none), no
# MOD() (SQLite's is a float function), and every intermediate below 2**63 (PostgreSQL raises on
# bigint overflow, SQLite silently turns the value into a float). Working modulo the prime
# 2**31 - 1 keeps every product below 2**62.
HOLDOUT_PRIME = 2_147_483_647
HOLDOUT_BUCKETS = 100


def _holdout_keys(rule_id: int) -> tuple[int, int, int]:
    """The rule's own multiplier and offsets: a different rule holds out other patients. Taken
    from sha256 (not Python's hash(), which changes between runs) so they never change."""
    digest = hashlib.sha256(f"holdout:{rule_id}".encode()).digest()
    a, b, c = (int.from_bytes(digest[i : i + 8], "big") for i in (0, 8, 16))
    return 1 + a % (HOLDOUT_PRIME - 1), b % HOLDOUT_PRIME, c % HOLDOUT_PRIME


def holdout_bucket(patient_id: int, rule_id: int) -> int:
    """Per row: the patient's bucket (0–99) for the rule; held out when below the share."""
    a, b, c = _holdout_keys(rule_id)
    x = (patient_id % HOLDOUT_PRIME * a + b) % HOLDOUT_PRIME
    # Squaring twice mixes the affine step, so that neighbouring ids land far apart.
    x = (x * x + c) % HOLDOUT_PRIME
    x = (x * x + b) % HOLDOUT_PRIME
    return x % HOLDOUT_BUCKETS


def holdout_bucket_expression(*, patient_ref: str, rule_id: int) -> Expression:
    """Set-based: holdout_bucket as an SQL expression over the patient id at `patient_ref`."""
    a, b, c = _holdout_keys(rule_id)
    prime = Value(HOLDOUT_PRIME, output_field=BigIntegerField())
    # The cast makes PostgreSQL do bigint arithmetic when the id column is an int4.
    x: Any = Cast(F(patient_ref), BigIntegerField()) % prime * a + b
    x = x % prime
    x = (x * x + c) % prime
    x = (x * x + b) % prime
    return x % HOLDOUT_BUCKETS  # type: ignore[no-any-return]


def is_held_out(rule: Rule, patient_id: int) -> bool:
    """Per row: whether the patient is in `rule`'s comparison group (gets nothing from it)."""
    return holdout_bucket(patient_id, rule.pk) < rule.holdout_percent


def held_out_q(rule: Rule, *, patient_ref: str = "patient_id") -> Q:
    """Set-based: a filter for the rows whose patient (at `patient_ref`) is held out of `rule`,
    e.g. `Visit.objects.filter(held_out_q(rule))`; `~held_out_q(rule)` for the others. Matches
    nothing when the rule holds out nobody."""
    if rule.holdout_percent <= 0:
        return Q(pk__in=[])
    bucket = holdout_bucket_expression(patient_ref=patient_ref, rule_id=rule.pk)
    return Q(LessThan(bucket, rule.holdout_percent))


# --- the other shared checks ---------------------------------------------------------------------


def already_confirmed(rule: Rule, appointment_status: str | None) -> bool:
    """A confirmation request for an appointment the patient already confirmed is noise."""
    return rule.asks_confirmation and appointment_status == Appointment.Status.CONFIRMED


def channel_order_for(rule: Rule, preferred: str) -> list[str]:
    """The rule's channels, with the patient's preferred one first when the rule allows it."""
    order = list(rule.channel_order)
    if preferred in order:
        order.remove(preferred)
        order.insert(0, preferred)
    return order


def pick_channel(row: Row, order: list[str]) -> Decision:
    """Set-based: the first channel in `order` that is configured here and that the annotated
    `row` may be contacted on; else the reason none is."""
    configured = [channel for channel in order if channel_configured(channel)]
    decision = choose_channel(row, configured)
    if not decision.allowed and decision.reason != SkipReason.ERASED:
        if choose_channel(row, order).allowed:
            return Decision(False, SkipReason.CHANNEL_NOT_CONFIGURED)
    return decision


def service_reply(message: OutboxMessage) -> bool:
    """Whether `message` is staff answering the patient on the channel the patient wrote on,
    written (anchor_at) less than SERVICE_WINDOW after the patient's message."""
    if message.rule.kind != RuleKind.STAFF or message.anchor_at is None:
        return False
    return InboundMessage.objects.filter(
        patient_id=message.patient_id,
        channel=message.channel,
        received_at__gt=message.anchor_at - SERVICE_WINDOW,
        received_at__lte=message.anchor_at,
    ).exists()


def channel_decision(message: OutboxMessage) -> Decision:
    """Per row: whether `message` may go out on its channel now."""
    decision = may_contact(
        patient=message.patient, purpose=message.purpose, channel=message.channel
    )
    if decision.reason == SkipReason.NO_CONSENT and service_reply(message):
        # Without consent for the purpose, an answer is still allowed, unless the patient
        # withdrew anything on the channel (STOP withdraws it all) or can't be reached there.
        withdrawn = ConsentState.objects.filter(
            patient_id=message.patient_id, channel=message.channel, granted=False
        ).exists()
        reachable = Patient.objects.filter(
            has_contact_point(message.channel), pk=message.patient_id
        ).exists()
        if withdrawn:
            decision = Decision(False, SkipReason.WITHDRAWN)
        elif not reachable:
            decision = Decision(False, SkipReason.NO_CONTACT_POINT)
        else:
            decision = Decision(True)
    if decision.allowed and not channel_configured(message.channel):
        return Decision(False, SkipReason.CHANNEL_NOT_CONFIGURED)
    return decision


def policy_annotations(*, rule: Rule, patient_ref: str, at: datetime) -> dict[str, Any]:
    """Everything `plan_decision` reads from a due row, as annotations for the rule's query."""
    annotations: dict[str, Any] = consent_annotations(
        purpose=rule.purpose, channels=rule.channel_order, patient_ref=patient_ref
    )
    if rule.purpose == Purpose.RELATIONSHIP:
        annotations["recent_relationship"] = cap_annotation(patient_ref=patient_ref, at=at)
    if rule.holdout_percent > 0:
        annotations["holdout_bucket"] = holdout_bucket_expression(
            patient_ref=patient_ref, rule_id=rule.pk
        )
    return annotations


def limits_audience(rule: Rule) -> bool:
    """Whether `rule` has an audience of its own beyond its conditions (sexes, ages,
    departments): without one, outside_audience only looks at a row's `in_conditions`."""
    return (
        bool(rule.sexes or rule.departments) or rule.min_age is not None or rule.max_age is not None
    )


def outside_audience(rule: Rule, row: Row, today: date) -> bool:
    if rule.sexes and row["patient_sex"] not in rule.sexes:
        return True
    if rule.min_age is not None or rule.max_age is not None:
        born = row["birth"]
        if born is None:
            return True
        age = age_on(born, today)
        if (rule.min_age is not None and age < rule.min_age) or (
            rule.max_age is not None and age > rule.max_age
        ):
            return True
    if "in_conditions" in row and not row["in_conditions"]:
        return True
    return bool(rule.departments) and row.get("visit_department") not in rule.departments


# --- the two faces -------------------------------------------------------------------------------


def plan_decision(*, rule: Rule, due: Due, now: datetime, profile: ClinicProfile) -> Planned:
    """Set-based face: queue `due` on a channel at a time, or the reason it is skipped."""
    row = due.row
    if row["erased"]:
        return Planned(skip=SkipReason.ERASED)
    # A rule without audience limits needs no clinic-local day: not worked out for each row.
    if (limits_audience(rule) or "in_conditions" in row) and outside_audience(
        rule, row, timezone.localdate(now)
    ):
        return Planned(skip=SkipReason.OUTSIDE_AUDIENCE)
    if already_confirmed(rule, row.get("appointment_status")):
        return Planned(skip=SkipReason.ALREADY_CONFIRMED)
    if over_cap(rule.purpose, row.get("recent_relationship")):
        return Planned(skip=SkipReason.FREQUENCY_CAP)
    decision = pick_channel(row, channel_order_for(rule, row["preferred"]))
    if not decision.allowed:
        return Planned(skip=SkipReason(decision.reason))
    if due.no_open_day:
        return Planned(skip=SkipReason.NO_OPEN_DAY)
    # Planned late (the worker was down), it can only go out from now on.
    send_at = fit(max(due.due_at, now), due.expires_at, profile)
    if send_at is None:
        return Planned(skip=SkipReason.STALE)
    # Last, so that the comparison group is exactly the patients who would have had it.
    if row.get("holdout_bucket", HOLDOUT_BUCKETS) < rule.holdout_percent:
        return Planned(skip=SkipReason.HOLDOUT)
    return Planned(channel=decision.reason, send_at=send_at)


def send_decision(*, message: OutboxMessage, now: datetime, profile: ClinicProfile) -> Verdict:
    """Per-row face: what to do with a claimed message at `now`. Reads fresh data; writes
    nothing."""
    if now >= message.expires_at:
        return _drop(SkipReason.STALE)
    if not message.rule.enabled:
        # Staff who switch a rule off expect its pending messages to stop too.
        return Verdict(Action.DROP, _("rule switched off"))
    if message.patient.erased_at is not None:
        return _drop(SkipReason.ERASED)
    if about_removed(message):
        return Verdict(Action.DROP, _("the record it is about was removed"))
    if reason := KINDS[message.rule.kind].still_true(message):
        return Verdict(Action.DROP, reason)
    if message.appointment is not None and already_confirmed(
        message.rule, message.appointment.status
    ):
        return _drop(SkipReason.ALREADY_CONFIRMED)
    # Only relationship messages are capped: a care reminder costs no count query.
    if message.purpose == Purpose.RELATIONSHIP and over_cap(
        message.purpose, cap_count(message=message, at=now)
    ):
        return _drop(SkipReason.FREQUENCY_CAP)
    decision = channel_decision(message)
    if not decision.allowed:
        code = SkipReason(decision.reason)
        if code == SkipReason.ERASED:
            return _drop(code)
        return Verdict(Action.SWITCH, str(code.label), code)
    if is_held_out(message.rule, message.patient_id):
        # The share was raised after this was queued: it stays out of the comparison group.
        return _drop(SkipReason.HOLDOUT)
    urgent = is_urgent(message)
    opens = opens_at(now, message.expires_at, profile, urgent=urgent)
    if opens is None:
        return _drop(SkipReason.STALE)
    if opens > now:
        return Verdict(Action.WAIT, until=opens)
    gap = timedelta(minutes=settings.MESSAGE_GAP_MINUTES)
    last = (
        OutboxMessage.objects.filter(patient_id=message.patient_id, status__in=SENT)
        .exclude(pk=message.pk)
        .aggregate(last=Max("sent_at"))["last"]
    )
    if last and now < last + gap:
        # One message at a time: the next waits, in priority order, instead of piling up.
        after_gap = opens_at(last + gap, message.expires_at, profile, urgent=urgent)
        if after_gap is None:
            return _drop(SkipReason.STALE)
        return Verdict(Action.WAIT, until=after_gap)
    return SEND


def about_removed(message: OutboxMessage) -> bool:
    """Whether a record `message` names (its appointment, procedure, …) is gone: with no
    foreign key in the database, a row deleted past the ORM leaves the message its id."""
    for about in MESSAGE_ABOUT:
        if getattr(message, f"{about}_id") is None:
            continue
        try:
            if getattr(message, about) is None:  # joined (select_related) and not found
                return True
        except ObjectDoesNotExist:  # read now and not found
            return True
    return False


def is_urgent(message: OutboxMessage) -> bool:
    """Whether `message` belongs to a group message staff marked urgent (only a doctor's
    patients of the same day, reminders.groups): it goes outside the send window."""
    if message.rule.kind != RuleKind.GROUP:
        return False
    send_id = message.occurrence_key.removeprefix("group:")
    return GroupSend.objects.filter(
        pk=int(send_id) if send_id.isdigit() else 0, urgent=True
    ).exists()


def opens_at(
    moment: datetime, expires: datetime, profile: ClinicProfile, *, urgent: bool
) -> datetime | None:
    """The first time at or after `moment` a message may go (None: not before `expires`): in
    the clinic's send window (`fit`); an urgent one outside it too, but never at night, only
    between URGENT_SEND_FROM and URGENT_SEND_UNTIL."""
    if not urgent:
        return fit(moment, expires, profile)
    earliest, latest = (
        time.fromisoformat(settings.URGENT_SEND_FROM),
        time.fromisoformat(settings.URGENT_SEND_UNTIL),
    )
    local = timezone.localtime(moment)
    send = moment
    if local.time() < earliest:
        send = at_local(local.date(), earliest)
    elif local.time() >= latest:
        send = at_local(local.date() + timedelta(days=1), earliest)
    return send if send < expires else None


def _drop(code: SkipReason) -> Verdict:
    return Verdict(Action.DROP, str(code.label), code)
