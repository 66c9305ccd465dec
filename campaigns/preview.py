"""What the care rules will do for one patient in the coming days, and why a queued message
waits: a dry run of the planner and a reading of the gate, for the patient page and the outbox.

Nothing here writes. `patient_plan` asks the same kinds (campaigns.kinds) and the same send
policy (campaigns.policy.plan_decision) as the planner, with each rule's due set narrowed to one
patient, for each coming day as the planner would see it when that day starts.
"""

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, F, Max, OuterRef, QuerySet, Subquery, Value
from django.utils import timezone
from django.utils.translation import get_language, override
from django.utils.translation import gettext as _

from campaigns.kinds import KINDS, Due, Row
from campaigns.models import MessageTemplate, Rule, Skip, SkipReason

# The planner's own rendering step, so that a dry run skips exactly what planning would.
from campaigns.planner import PlanResult, ToQueue, outbox_rows
from campaigns.policy import (
    CAP_WINDOW,
    SENT,
    Planned,
    cap_annotation,
    plan_decision,
    policy_annotations,
)
from campaigns.sendwindow import at_local, day_bounds, fit
from campaigns.templating import format_date, local_time
from consent.models import Channel, Purpose
from patients.models import ClinicProfile, Patient
from reminders.models import OutboxMessage, Status

PLAN_DAYS = 30


@dataclass(frozen=True)
class PlannedRow:
    """One occurrence a rule has due for the patient: when and on which channel it would go
    out, or the reason it would not."""

    rule_id: int
    rule_name: str
    day: date  # the day the planner would decide it
    occurrence_key: str
    send_at: datetime | None = None
    channel: str = ""
    skip: SkipReason | None = None

    @property
    def when(self) -> str:
        """The day and time in the clinic's zone; only the day for a skip."""
        language = "en" if _english() else "zh-hant"
        if self.send_at is None:
            return _day(self.day, language)
        local = timezone.localtime(self.send_at)
        return f"{_day(local.date(), language)} {local:%H:%M}"

    @property
    def about(self) -> str:
        return occurrence_label(self.occurrence_key)

    @property
    def channel_label(self) -> str:
        return str(Channel(self.channel).label) if self.channel else ""

    @property
    def reason_label(self) -> str:
        return str(self.skip.label) if self.skip is not None else ""


def patient_plan(*, patient: Patient, now: datetime, days: int = PLAN_DAYS) -> list[PlannedRow]:
    """What every enabled rule has due for `patient` from `now` through the next `days` days,
    in the order it would go out; occurrences already in the outbox are history, not plan.

    Two queries per rule for all the days (see _patient_dues), plus the planner's rendering
    for what would be queued. Writes nothing.
    """
    profile = ClinicProfile.load()
    today = timezone.localdate(now)
    # The planner runs every few minutes: each later day is decided as that day begins.
    moments = [now] + [at_local(today + timedelta(days=i), time.min) for i in range(1, days)]
    rules = list(Rule.objects.filter(enabled=True).prefetch_related("conditions"))
    seen = set(
        OutboxMessage.objects.filter(patient=patient).values_list("rule_id", "occurrence_key")
    )
    dues: dict[tuple[int, int], list[Due]] = defaultdict(list)  # (moment, rule id) → dues
    for rule in rules:
        for index, due in _patient_dues(rule, patient=patient, moments=moments, profile=profile):
            if (rule.pk, due.occurrence_key) not in seen:
                seen.add((rule.pk, due.occurrence_key))
                dues[index, rule.pk].append(due)
    planned: list[PlannedRow] = []
    relationship_sends: list[datetime] = []  # what this dry run adds to the frequency cap
    for index, moment in enumerate(moments):
        for rule in rules:
            if (index, rule.pk) not in dues:
                continue
            rows = _decide(rule, dues[index, rule.pk], moment, profile, relationship_sends)
            planned.extend(rows)
            if rule.purpose == Purpose.RELATIONSHIP:
                relationship_sends.extend(row.send_at for row in rows if row.send_at)
    return sorted(planned, key=lambda row: row.send_at or day_bounds(row.day)[0])


def _patient_dues(
    rule: Rule, *, patient: Patient, moments: list[datetime], profile: ClinicProfile
) -> Iterator[tuple[int, Due]]:
    """The rule's occurrences for `patient` at each of `moments`, with the moment's index.

    The planner's due set (campaigns.planner.due_set) is the kind's selection annotated with
    the patient's facts for the policy. For one patient those facts are the same every day but
    the frequency-cap count, so they are read once, with the count at each moment; and each
    day's selection, narrowed to the patient (an indexed column), joins one UNION ALL.
    """
    kind = KINDS[rule.kind]
    parts: list[QuerySet[Any]] = []
    expanders: list[Callable[[Row], Iterator[Due]]] = []
    for index, moment in enumerate(moments):
        selection = kind.select(rule, timezone.localdate(moment), moment, profile)
        rows = selection.rows.filter(**{selection.patient_ref: patient.pk})
        parts.append(rows.values(*kind.fields).annotate(plan_day=Value(index)).order_by())
        expanders.append(selection.expand)
    first, *rest = parts
    selected = list(first.union(*rest, all=True))
    if not selected:
        return
    facts = _patient_facts(rule, patient=patient, moments=moments)
    for selected_row in selected:
        index = selected_row.pop("plan_day")
        capped = {"recent_relationship": facts.get(f"recent_relationship_{index}")}
        for due in expanders[index]({**facts, **capped, **selected_row}):
            yield index, due


def _patient_facts(rule: Rule, *, patient: Patient, moments: list[datetime]) -> dict[str, Any]:
    """What campaigns.planner.due_set annotates on every due row, for this one patient: the
    policy's annotations, with the frequency-cap count at each of `moments`."""
    annotations: dict[str, Any] = {
        "pid": F("id"),
        "birth": F("birth_date"),
        "patient_sex": F("sex"),
        "preferred": F("preferred_channel"),
        "language": F("preferred_language"),
        **policy_annotations(rule=rule, patient_ref="id", at=moments[0]),
    }
    annotations.pop("recent_relationship", None)
    if rule.purpose == Purpose.RELATIONSHIP:
        for index, moment in enumerate(moments):
            annotations[f"recent_relationship_{index}"] = cap_annotation(
                patient_ref="id", at=moment
            )
    if rule.conditions.exists():
        annotations["in_conditions"] = Exists(
            Patient.conditions.through.objects.filter(
                patient_id=OuterRef("id"), condition__in=rule.conditions.all()
            )
        )
    facts = Patient.objects.filter(pk=patient.pk).annotate(**annotations).values(*annotations)
    return dict(facts.get())


def _decide(
    rule: Rule,
    dues: list[Due],
    now: datetime,
    profile: ClinicProfile,
    relationship_sends: list[datetime],
) -> list[PlannedRow]:
    """plan_decision for each occurrence, then the planner's own outbox rows for those it would
    queue (a missing template is a skip there too)."""
    day = timezone.localdate(now)
    rows: list[PlannedRow] = []
    to_queue: list[ToQueue] = []
    for due in dues:
        counted = _with_planned_cap(rule, due, now, relationship_sends)
        decision = plan_decision(rule=rule, due=counted, now=now, profile=profile)
        if decision.skip is not None or decision.send_at is None:
            rows.append(_row(rule, due, day, decision))
        else:
            to_queue.append(ToQueue(due, decision.channel, decision.send_at))
    if not to_queue:
        return rows
    templates = {(t.channel, t.language): t for t in MessageTemplate.objects.filter(rule=rule)}
    skips: list[Skip] = []
    messages = outbox_rows(rule, to_queue, templates, PlanResult(), skips, now)
    for message in messages:
        rows.append(
            PlannedRow(
                rule.pk,
                rule.name,
                day,
                message.occurrence_key,
                send_at=message.due_at,
                channel=message.channel,
            )
        )
    for skip in skips:
        reason = SkipReason(skip.reason)
        rows.append(PlannedRow(rule.pk, rule.name, day, skip.occurrence_key, skip=reason))
    return rows


def _with_planned_cap(
    rule: Rule, due: Due, now: datetime, relationship_sends: list[datetime]
) -> Due:
    """`due` with the relationship messages this dry run planned before `now` counted towards
    the frequency cap, as the outbox rows they would be by then."""
    if rule.purpose != Purpose.RELATIONSHIP:
        return due
    extra = sum(1 for sent in relationship_sends if now - CAP_WINDOW < sent <= now)
    if not extra:
        return due
    row = {**due.row, "recent_relationship": (due.row.get("recent_relationship") or 0) + extra}
    return replace(due, row=row)


def _row(rule: Rule, due: Due, day: date, decision: Planned) -> PlannedRow:
    return PlannedRow(
        rule.pk,
        rule.name,
        day,
        due.occurrence_key,
        send_at=decision.send_at,
        channel=decision.channel,
        skip=decision.skip,
    )


# --- occurrences in words ------------------------------------------------------------------------


def occurrence_label(key: str) -> str:
    """An occurrence key ("appointment:12:2026-12-07T06:30:00+00:00") in words, with times in
    the clinic's zone; the key itself when it is not one the kinds make."""
    language = "en" if _english() else "zh-hant"
    kind, _sep, rest = key.partition(":")
    try:
        if kind == "birthday":
            return _("birthday %(date)s") % {"date": _day(date.fromisoformat(rest), language)}
        if kind == "recall":
            day = date.fromisoformat(rest)
            return _("last visit %(date)s") % {"date": _day(day, language)}
        if kind == "procedure":
            offset = int(rest.rsplit(":day", 1)[1])
            if offset == 0:
                return _("discharge day")
            return _("day %(count)d after discharge") % {"count": offset}
        if kind == "appointment":
            starts = timezone.localtime(datetime.fromisoformat(rest.split(":", 1)[1]))
            return _("visit %(date)s %(time)s") % {
                "date": _day(starts.date(), language),
                "time": f"{starts:%H:%M}",
            }
        if kind == "dose":
            moment, minutes = rest.split(":", 1)[1].rsplit(":", 1)
            dose_day, clock = moment.split("T")
            return _("dose %(date)s %(time)s, %(minutes)s minutes before") % {
                "date": _day(date.fromisoformat(dose_day), language),
                "time": clock,
                "minutes": minutes,
            }
        if kind == "refill":
            return _refill_label(rest.split(":", 1)[1])
    except (ValueError, IndexError):
        pass
    return key


def _refill_label(anchor: str) -> str:
    """ "opens_on+0" → "the day the refill window opens", "closes_on-2" → "2 days before …"."""
    opens = anchor.startswith("opens_on")
    offset = int(anchor.removeprefix("opens_on").removeprefix("closes_on"))
    if offset == 0:
        return _("the day the refill window opens") if opens else _("the refill window's last day")
    words = {"days": abs(offset)}
    if opens:
        if offset < 0:
            return _("%(days)d days before the refill window opens") % words
        return _("%(days)d days after the refill window opens") % words
    if offset < 0:
        return _("%(days)d days before the refill window closes") % words
    return _("%(days)d days after the refill window closed") % words


def _day(day: date, language: str) -> str:
    return format_date(day, language)


# --- why a queued message waits ------------------------------------------------------------------


def last_sent_annotation() -> Subquery:
    """Set-based: when the message's patient last had another message sent, for
    `message_waiting_for` (the gap the gate keeps between two messages)."""
    return Subquery(
        OutboxMessage.objects.filter(patient_id=OuterRef("patient_id"), status__in=SENT)
        .exclude(pk=OuterRef("pk"))
        .order_by()
        .values("patient_id")
        .annotate(last=Max("sent_at"))
        .values("last")
    )


def message_waiting_for(
    *,
    message: OutboxMessage,
    now: datetime,
    profile: ClinicProfile,
    last_sent_at: datetime | None = None,
) -> str:
    """What a queued message waits for, in words, read from its own fields and the send
    window: the next send window, the gap after the previous message, a retry, or the worker;
    and the channel it moved to when an earlier one was passed over. "" for any other status."""
    if message.status != Status.QUEUED:
        return ""
    parts: list[str] = []
    at = message.next_attempt_at
    local = timezone.localtime(at)
    gap = timedelta(minutes=settings.MESSAGE_GAP_MINUTES)
    if at <= now:
        parts.append(_("due now, waiting for the sender"))
    elif last_sent_at is not None and at == fit(last_sent_at + gap, at + gap, profile):
        parts.append(
            _("waiting %(minutes)d minutes after the previous message")
            % {"minutes": settings.MESSAGE_GAP_MINUTES}
        )
    elif local.time() == profile.send_window_start:
        parts.append(_("next send window %(when)s") % {"when": _when(at, now)})
    elif message.attempts and message.error:
        parts.append(_("trying again %(when)s after a temporary error") % {"when": _when(at, now)})
    else:
        parts.append(_("planned for %(when)s") % {"when": _when(at, now)})
    if switched := _passed_over(message):
        parts.append(
            _("%(reason)s, will go by %(channel)s")
            % {"reason": switched, "channel": Channel(message.channel).label}
        )
    return ("; " if _english() else "；").join(parts)


def _when(moment: datetime, now: datetime) -> str:
    """ "09:00" today, else the day and time, in the clinic's zone."""
    if timezone.localdate(moment) == timezone.localdate(now):
        return local_time(moment)
    language = "en" if _english() else "zh-hant"
    return f"{_day(timezone.localdate(moment), language)} {local_time(moment)}"


def _passed_over(message: OutboxMessage) -> str:
    """Why the message left an earlier channel for the one it is on, as dispatch wrote it
    ("SMS: consent withdrawn"); "" when it never moved."""
    last = message.error.rsplit("; ", 1)[-1]
    for channel in Channel:
        if channel == message.channel:
            continue
        for language in ("zh-hant", "en"):
            with override(language):
                if last.startswith(f"{channel.label}:"):
                    return last
    return ""


def _english() -> bool:
    return (get_language() or "").startswith("en")
