"""Group messages: one text staff send to a chosen group, through the outbox and its gate.

A group is either a doctor's patients of one day (appointments not cancelled, optionally of one
department: "the doctor is 30 minutes late") or a segment (age, sex, condition, department and
last visit). Before sending, `group_counts` says how many would get it on which channel and
why the others would not, in one aggregate query over the policy's own set-based annotations
(campaigns.policy.policy_annotations, the facts the planner's plan_decision reads) folded into
one SQL CASE that chooses as campaigns.policy.pick_channel does. `group_send` queues one outbox
row per reachable patient, streamed and inserted in batches, all with one occurrence key per
send: the gate checks each again when it goes (consent, erasure, the cap), the send window holds
them unless the send is urgent, and the dispatcher's channel rate limits apply as to any rule.

The confirm step carries a signed token of the group, the text and the counts shown; a token
is used once (GroupSend.token_hash), and a group whose counts changed since is shown again.
"""

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from itertools import islice
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models import CharField as CharFieldType
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.costs import channel_size
from campaigns.models import Rule, RuleKind, SkipReason
from campaigns.policy import opens_at, policy_annotations
from campaigns.sendwindow import day_bounds
from clinic_crm.copy_insert import insert_new
from consent.models import Channel, Purpose
from patients.models import Appointment, AuditEntry, ClinicProfile, Patient, Visit
from patients.services import audit_record
from reminders.channels.base import channel_configured
from reminders.inbox import MAX_REPLY_CHARS, text_clean
from reminders.models import GroupSend, OutboxMessage

log = logging.getLogger(__name__)

GROUP_CHANNELS = [Channel.LINE, Channel.SMS]
# A segment's message is still worth sending this long after it was confirmed (a weekend of
# closed days with the send window).
SEGMENT_MESSAGE_LIFE = timedelta(days=3)
BATCH = 2000
SALT = "reminders.groups"
# The outcomes besides a channel, in the order the page lists them.
EXCLUSIONS = [
    SkipReason.ERASED,
    SkipReason.FREQUENCY_CAP,
    SkipReason.NO_CONSENT,
    SkipReason.WITHDRAWN,
    SkipReason.NO_CONTACT_POINT,
    SkipReason.CHANNEL_NOT_CONFIGURED,
]


class GroupRefused(Exception):
    """The group message can't go; the message says why, in the clinic's language."""


@dataclass(frozen=True)
class GroupDefinition:
    """Who a group message goes to. `kind` "day": `doctor`'s patients on `day` (and
    `department`); "segment": every filter given (empty ones select everyone)."""

    kind: str
    day: date | None = None
    doctor: str = ""
    department: str = ""
    min_age: int | None = None
    max_age: int | None = None
    sex: str = ""
    condition: str = ""  # patients.Condition.code
    visited_after: date | None = None  # last visit on or after
    visited_before: date | None = None  # last visit before (and at least one visit)

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, date) else v)
            for k, v in asdict(self).items()
            if v not in (None, "")
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroupDefinition":
        values = dict(data)
        for name in ("day", "visited_after", "visited_before"):
            if values.get(name):
                values[name] = date.fromisoformat(values[name])
        return cls(**values)


@dataclass(frozen=True)
class GroupCounts:
    """How many in the group get the message on each channel, and how many are excluded why."""

    channels: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def reached(self) -> int:
        return sum(self.channels.values())

    @property
    def total(self) -> int:
        return self.reached + sum(self.excluded.values())

    def as_dict(self) -> dict[str, int]:
        return {**self.channels, **self.excluded}


def _age_at_least(years: int, today: date) -> Q:
    """Q for patients `years` old or older on `today`, as patients.models.age_on counts."""
    year, mmdd = today.year - years, today.month * 100 + today.day
    return Q(birth_date__year__lt=year) | Q(birth_date__year=year, birth_mmdd__lte=mmdd)


def group_patients(definition: GroupDefinition, *, today: date) -> QuerySet[Patient]:
    """The patients of `definition` (each once). Raises GroupRefused when the definition is
    incomplete (a day group without a doctor or day)."""
    d = definition
    patients = Patient.objects.all()
    if d.kind == GroupSend.Kind.DAY:
        if not (d.day and d.doctor):
            raise GroupRefused(_("Choose a day and a doctor."))
        start, end = day_bounds(d.day)
        appointments = Appointment.objects.filter(
            starts_at__gte=start, starts_at__lt=end, doctor=d.doctor
        ).exclude(status=Appointment.Status.CANCELLED)
        if d.department:
            appointments = appointments.filter(department=d.department)
        return patients.filter(Exists(appointments.filter(patient_id=OuterRef("pk"))))
    if d.kind != GroupSend.Kind.SEGMENT:
        raise GroupRefused(_("Choose a group."))
    if d.min_age is not None or d.max_age is not None:
        patients = patients.filter(birth_date__isnull=False)
    if d.min_age is not None:
        patients = patients.filter(_age_at_least(d.min_age, today))
    if d.max_age is not None:
        patients = patients.exclude(_age_at_least(d.max_age + 1, today))
    if d.sex:
        patients = patients.filter(sex=d.sex)
    if d.condition:
        patients = patients.filter(
            Exists(
                Patient.conditions.through.objects.filter(
                    patient_id=OuterRef("pk"), condition__code=d.condition
                )
            )
        )
    visits = Visit.objects.filter(patient_id=OuterRef("pk"))
    if d.department:
        patients = patients.filter(Exists(visits.filter(department=d.department)))
    if d.visited_after or d.visited_before:
        last = Subquery(visits.order_by("-visited_on").values("visited_on")[:1])
        patients = patients.alias(last_visit=last)
        if d.visited_after:
            patients = patients.filter(last_visit__gte=d.visited_after)
        if d.visited_before:
            patients = patients.filter(last_visit__lt=d.visited_before)
    return patients


def group_rule(purpose: str) -> Rule:
    """The never-planned rule a group message for `purpose` is queued under (one per purpose:
    the gate and the policy's annotations read the purpose from the rule)."""
    rule, _created = Rule.objects.get_or_create(
        kind=RuleKind.GROUP,
        purpose=purpose,
        defaults={
            "name": f"群組訊息 Group message ({purpose})",
            "channel_order": list(GROUP_CHANNELS),
            "offsets": [0],
            "priority": 10,
        },
    )
    return rule


def _outcome(rule: Rule) -> Case:
    """The channel the gate would send on, or the reason it would not: what
    campaigns.policy.pick_channel (after the erased and cap checks of plan_decision) decides
    per row, as one SQL CASE over the policy's annotations."""

    def reachable(channel: str) -> Q:
        return Q(**{f"{channel}_granted": True, f"{channel}_address": True})

    order = list(rule.channel_order)
    configured = [c for c in order if channel_configured(c)]
    whens = [When(erased=True, then=Value(SkipReason.ERASED.value))]
    if rule.purpose == Purpose.RELATIONSHIP:
        whens.append(
            When(
                recent_relationship__gte=settings.RELATIONSHIP_MESSAGES_PER_30_DAYS,
                then=Value(SkipReason.FREQUENCY_CAP.value),
            )
        )
    # The patient's preferred channel first (campaigns.policy.channel_order_for), then the rule's.
    whens += [When(Q(preferred=c) & reachable(c), then=Value(c)) for c in configured]
    whens += [When(reachable(c), then=Value(c)) for c in configured]
    off = Q()
    for c in order:
        if c not in configured:
            off |= reachable(c)
    if off:
        whens.append(When(off, then=Value(SkipReason.CHANNEL_NOT_CONFIGURED.value)))
    granted = Q()
    withdrawn = Q()
    for c in order:
        granted |= Q(**{f"{c}_granted": True})
        withdrawn |= Q(**{f"{c}_withdrawn": True})
    whens.append(When(granted, then=Value(SkipReason.NO_CONTACT_POINT.value)))
    whens.append(When(withdrawn, then=Value(SkipReason.WITHDRAWN.value)))
    return Case(*whens, default=Value(SkipReason.NO_CONSENT.value), output_field=CharFieldType())


def group_counts(definition: GroupDefinition, *, purpose: str, now: datetime) -> GroupCounts:
    """How many patients of `definition` would get a message for `purpose` on each channel,
    and how many are excluded for each reason: one aggregate query, no row read into Python.
    Raises GroupRefused for an incomplete definition."""
    rule = group_rule(purpose)
    patients = group_patients(definition, today=timezone.localdate(now))
    rows = (
        _annotated(patients, rule=rule, now=now)
        .order_by()
        .values("outcome")
        .annotate(n=Count("id"))
    )
    counts = GroupCounts()
    for row in rows:
        target = counts.channels if row["outcome"] in GROUP_CHANNELS else counts.excluded
        target[row["outcome"]] = row["n"]
    return counts


def _annotated(patients: QuerySet[Patient], *, rule: Rule, now: datetime) -> QuerySet[Any]:
    """`patients` with the policy's annotations at `now` and the `outcome` they lead to."""
    annotations = policy_annotations(rule=rule, patient_ref="id", at=now)
    return (
        patients.alias(**annotations)
        .alias(preferred=F("preferred_channel"))
        .annotate(outcome=_outcome(rule))
    )


# --- preview and send ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """What the confirm step shows, and the signed token that confirms exactly it."""

    definition: GroupDefinition
    purpose: str
    text: str
    urgent: bool
    counts: GroupCounts
    sends_at: datetime  # now when urgent, else when the send window opens
    expires_at: datetime
    token: str


class GroupChanged(Exception):
    """The group's counts changed between the preview and the confirmation: `preview` is the
    new one, to be shown again."""

    def __init__(self, preview: Preview):
        super().__init__("group changed")
        self.preview = preview


def may_send(user: Any, kind: str) -> bool:
    """The manager sends to any group; the front desk only to a doctor's patients of a day."""
    if user.has_perm("reminders.send_group_message"):
        return True
    return kind == GroupSend.Kind.DAY and user.has_perm("reminders.send_day_group_message")


def _checked_text(body: str) -> str:
    text, _shortened = text_clean(body.replace("\r\n", "\n").strip())
    if not text:
        raise GroupRefused(_("Write a message first."))
    if len(text) > MAX_REPLY_CHARS:
        raise GroupRefused(
            _("The message is too long: at most %(n)d characters.") % {"n": MAX_REPLY_CHARS}
        )
    return text


def _expires(definition: GroupDefinition, *, now: datetime, urgent: bool) -> datetime:
    if definition.kind == GroupSend.Kind.DAY and definition.day is not None:
        # "The doctor is late" is no use after that day.
        return day_bounds(definition.day)[1]
    if urgent:
        return day_bounds(timezone.localdate(now))[1]
    return now + SEGMENT_MESSAGE_LIFE


def group_preview(
    *,
    definition: GroupDefinition,
    purpose: str,
    body: str,
    urgent: bool,
    now: datetime,
    profile: ClinicProfile,
) -> Preview:
    """The counts and the sending time of a group message, with the token that confirms it.
    Writes nothing. Raises GroupRefused (no text, too long, too big a group, urgent on another
    day or a segment, a day gone, too late to be of use)."""
    text = _checked_text(body)
    today = timezone.localdate(now)
    if definition.kind == GroupSend.Kind.DAY:
        purpose = Purpose.CARE  # a change to the patient's own visit is care
        if definition.day is not None and definition.day < today:
            raise GroupRefused(_("That day has passed."))
    elif purpose not in (Purpose.CARE, Purpose.RELATIONSHIP):
        raise GroupRefused(_("Choose what the message is for."))
    if urgent and not (definition.kind == GroupSend.Kind.DAY and definition.day == today):
        raise GroupRefused(
            _("Urgent (sent outside the send window) is only for a doctor's patients of today.")
        )
    counts = group_counts(definition, purpose=purpose, now=now)
    if counts.total > settings.GROUP_MESSAGE_MAX:
        raise GroupRefused(
            _(
                "This group has %(n)d patients, more than the %(max)d a group message may go "
                "to. Narrow it down (or send it in parts)."
            )
            % {"n": counts.total, "max": settings.GROUP_MESSAGE_MAX}
        )
    expires = _expires(definition, now=now, urgent=urgent)
    sends_at = opens_at(now, expires, profile, urgent=urgent)
    if sends_at is None:
        raise GroupRefused(
            _("It would arrive too late: the send window does not open again before %(end)s.")
            % {"end": timezone.localtime(expires).strftime("%Y-%m-%d %H:%M")}
        )
    token = signing.dumps(
        {
            "g": definition.as_dict(),
            "p": purpose,
            "t": text,
            "u": urgent,
            "c": counts.as_dict(),
        },
        salt=SALT,
        compress=True,
    )
    return Preview(definition, purpose, text, urgent, counts, sends_at, expires, token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def group_send(
    *, token: str, by: User, now: datetime, profile: ClinicProfile, path: str = ""
) -> tuple[GroupSend, bool]:
    """Queue the group message the signed `token` confirms, one outbox row per patient the
    gate would let it reach, and audit it; returns (the send, whether it was queued now). The
    same token again returns the first send and queues nothing. Raises GroupRefused (a bad or
    expired token, not allowed, refused as in group_preview, nobody to reach) or GroupChanged
    (the counts differ from those the token was made with)."""
    try:
        data = signing.loads(
            token, salt=SALT, max_age=timedelta(minutes=settings.GROUP_CONFIRM_MINUTES)
        )
    except signing.SignatureExpired as error:
        raise GroupRefused(_("The confirmation has expired: check the group again.")) from error
    except signing.BadSignature as error:
        raise GroupRefused(_("The confirmation is not valid: check the group again.")) from error
    key = token_hash(token)
    if existing := GroupSend.objects.filter(token_hash=key).first():
        return existing, False
    definition = GroupDefinition.from_dict(data["g"])
    if not may_send(by, definition.kind):
        raise GroupRefused(_("You may not send a message to this group."))
    preview = group_preview(
        definition=definition,
        purpose=data["p"],
        body=data["t"],
        urgent=data["u"],
        now=now,
        profile=profile,
    )
    if preview.counts.as_dict() != data["c"]:
        raise GroupChanged(preview)
    if preview.counts.reached == 0:
        raise GroupRefused(_("Nobody in this group can be reached."))
    with transaction.atomic():
        try:
            with transaction.atomic():
                send = GroupSend.objects.create(
                    kind=definition.kind,
                    definition=definition.as_dict(),
                    body=preview.text,
                    purpose=preview.purpose,
                    urgent=preview.urgent,
                    counts=preview.counts.as_dict(),
                    token_hash=key,
                    created_by=by,
                    created_at=now,
                )
        except IntegrityError:
            # The same confirmation, submitted twice at once: the other one queues it.
            return GroupSend.objects.get(token_hash=key), False
        rule = group_rule(preview.purpose)
        patients = group_patients(definition, today=timezone.localdate(now))
        for batch in _batches(_annotated(patients, rule=rule, now=now)):
            insert_new(
                OutboxMessage,
                [_message(send, rule, patient, preview) for patient in batch],
                unique_fields=("rule", "patient", "occurrence_key"),
            )
        send.queued = OutboxMessage.objects.filter(
            rule=rule, occurrence_key=send.occurrence_key
        ).count()
        send.save(update_fields=["queued"])
        excluded = sum(preview.counts.excluded.values())
        audit_record(
            actor=by,
            action=AuditEntry.Action.SEND,
            patients=[],
            path=path,
            detail=(
                f"group message {send.pk}: {send.queued} queued, {excluded} excluded; "
                f"{definition.as_dict()}"
            ),
        )
    log.info(
        "group message %s by user %s: %d queued, %d excluded, urgent=%s",
        send.pk,
        by.pk,
        send.queued,
        excluded,
        send.urgent,
    )
    return send, True


def _batches(patients: QuerySet[Any]) -> Iterator[list[Patient]]:
    """The reachable patients, BATCH at a time by id (keyset pages: no cursor stays open
    while their messages are written, and no list of the whole group is held)."""
    rows = patients.filter(outcome__in=[str(c) for c in GROUP_CHANNELS]).only("id", "uuid", "phone")
    last = 0
    while batch := list(islice(rows.filter(pk__gt=last).order_by("pk")[:BATCH], BATCH)):
        yield batch
        last = batch[-1].pk


def _message(send: GroupSend, rule: Rule, patient: Patient, preview: Preview) -> OutboxMessage:
    channel: str = patient.outcome  # type: ignore[attr-defined]
    return OutboxMessage(
        rule=rule,
        patient_id=patient.pk,
        occurrence_key=send.occurrence_key,
        purpose=preview.purpose,
        channel=channel,
        channels_left=[],
        due_at=preview.sends_at,
        next_attempt_at=preview.sends_at,
        expires_at=preview.expires_at,
        body=preview.text,
        priority=rule.priority,
        **channel_size(channel, preview.text, patient.phone or ""),
    )


def tomorrow(now: datetime) -> date:
    return timezone.localdate(now) + timedelta(days=1)


def doctors_on(day: date) -> list[str]:
    """The doctors with appointments (not cancelled) on `day`, for the page's choice."""
    start, end = day_bounds(day)
    return list(
        Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end)
        .exclude(status=Appointment.Status.CANCELLED)
        .order_by("doctor")
        .values_list("doctor", flat=True)
        .distinct()
    )
