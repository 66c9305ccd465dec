"""The week ahead: how many messages each enabled rule will send on each of the coming days.

A dry run of the planner over the whole clinic, for the manager's dashboard: nothing is written.
Two parts, added without counting one message twice:

- what is already in the outbox waiting to go (queued), on the day it is set to go out;
- what the planner has not queued yet: each rule's own due set (the kind's selection with the
  planner's own campaigns.planner.due_annotations, see `_annotated`) as the planner will
  select it when each coming day begins (today: at `now`), decided by the
  send policy's own set-based face (campaigns.policy.plan_decision), counted on the clinic-local
  day of the send time it chooses (closed days and the send window moved it there). An
  occurrence already in the outbox (queued, sent or dropped) is left out, as the planner leaves
  it out; one the forecast itself counted on an earlier day is not counted again.

Set-based: one query per rule for the whole week (see `_week_rows`), its rows streamed
(`.iterator()`, batches of 2,000) and only counted; the queued messages in one aggregate. No
list of due rows is kept; only a relationship rule read day by day remembers the occurrences
it counted, for the kinds that select one occurrence on several days (see `_repeats`).

What is approximated, and how:
- consent, contact points, audience, the holdout and closed days are exactly the planner's;
- the frequency cap counts what the outbox holds at each day's start, not the relationship
  messages this forecast plans for the days before it (a patient with two birthday-like
  messages due in one week may be counted twice where the planner would cap the second);
- the template: a channel counts when the rule has a template for it in the patient's
  language or in zh-Hant, as the planner decides; a text that fails to render or is too long
  for the channel when it is made at send time is not foreseen and counts as sent;
- appointments booked, records added or consent changed after `now` are not known yet;
- a queued message counts on the day of its next attempt (or today when that has passed),
  although the gate may still drop it (consent withdrawn, appointment cancelled).
"""

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import reduce
from itertools import islice
from operator import or_
from typing import Any

from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Count,
    ExpressionWrapper,
    Q,
    QuerySet,
    Value,
)
from django.db.models.functions import Greatest, TruncDate
from django.utils import timezone

from campaigns.kinds import KINDS, Due
from campaigns.models import MessageTemplate, Rule, RuleKind
from campaigns.planner import BATCH, _existing_keys, due_annotations
from campaigns.policy import plan_decision
from campaigns.sendwindow import at_local
from consent.models import Purpose
from patients.models import Appointment, ClinicProfile, Visit
from reminders.models import OutboxMessage, Status

FALLBACK_LANGUAGE = "zh-hant"  # the planner's template fallback (campaigns.planner._template)


@dataclass(frozen=True)
class ForecastRow:
    """How many messages `rule_id` will send on `channel` on the clinic-local `day`."""

    rule_id: int
    day: date
    channel: str
    messages: int


Key = tuple[int, date, str]  # rule id, day, channel


def week_ahead(
    *,
    now: datetime,
    days: int = 7,
    rule_ids: Iterable[int] | None = None,
    channel: str | None = None,
    department: str | None = None,
    doctor: str | None = None,
) -> list[ForecastRow]:
    """Messages per enabled rule, clinic-local day and channel, from today through the next
    `days` days (today included), sorted by rule, day and channel; days without any are left
    out. `department` and `doctor` keep the patients with a visit or an appointment of that
    department or doctor (the dashboard's definition: a birthday names no doctor). Writes
    nothing. Raises ValueError when `days` is not positive."""
    if days < 1:
        raise ValueError("days must be at least 1")
    rules = Rule.objects.filter(enabled=True).prefetch_related("conditions")
    if rule_ids is not None:
        rules = rules.filter(pk__in=list(rule_ids))
    patients = _patients(department=department, doctor=doctor)
    # Before the read-only snapshot below: on a new install this creates the profile's row.
    profile = ClinicProfile.load()
    outermost = not connection.in_atomic_block
    with transaction.atomic(), timezone.override(timezone.get_default_timezone()):
        # The clinic's zone, active: each of the many send-time lookups below then finds it
        # at once instead of falling back to the default (a measurable share of the time).
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                if outermost:
                    # One snapshot for every query: a planning pass that commits meanwhile
                    # can't move a message from "due" to "queued" and be counted twice; and
                    # the database itself refuses any write.
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # Sixty-odd short queries: compiling each (JIT) costs about as much as running
                # it.
                cursor.execute("SET LOCAL jit = off")
        counts = _count(
            rules, now=now, days=days, channel=channel, patients=patients, profile=profile
        )
    return [
        ForecastRow(rule_id, day, on, n)
        for (rule_id, day, on), n in sorted(counts.items())
        if n > 0
    ]


def _count(
    rules: QuerySet[Rule],
    *,
    now: datetime,
    days: int,
    channel: str | None,
    patients: "Patients | None",
    profile: ClinicProfile,
) -> Counter[Key]:
    """The queued messages and the planner's dry run, added up per rule, day and channel."""
    today = timezone.localdate(now)
    last = today + timedelta(days=days - 1)
    counts: Counter[Key] = Counter()
    _count_queued(counts, rules, now=now, last=last, channel=channel, patients=patients)
    # The planner runs every few minutes: each later day is decided as that day begins.
    moments = [now] + [at_local(today + timedelta(days=i), time.min) for i in range(1, days)]
    for rule in rules:
        _count_dues(
            counts,
            rule,
            moments=moments,
            profile=profile,
            last=last,
            channel=channel,
            patients=patients,
        )
    return counts


@dataclass(frozen=True)
class Patients:
    """The patients with a visit or appointment of a department and doctor (either may be
    empty), as a filter on any path to the patient id."""

    where: dict[str, str]

    def q(self, ref: str) -> Q:
        visits = Visit.objects.filter(**self.where).values("patient_id")
        appointments = Appointment.objects.filter(**self.where).values("patient_id")
        return Q(**{f"{ref}__in": visits}) | Q(**{f"{ref}__in": appointments})


def _patients(*, department: str | None, doctor: str | None) -> Patients | None:
    if not (department or doctor):
        return None
    where = {"department": department} if department else {}
    if doctor:
        where["doctor"] = doctor
    return Patients(where)


def _count_queued(
    counts: Counter[Key],
    rules: QuerySet[Rule],
    *,
    now: datetime,
    last: date,
    channel: str | None,
    patients: Patients | None,
) -> None:
    """Add the outbox's queued messages, one aggregate query: those of enabled rules still
    useful now, on the day they are set to go out (today if that moment has passed)."""
    end = at_local(last + timedelta(days=1), time.min)
    queued = OutboxMessage.objects.filter(
        status=Status.QUEUED,
        rule__in=rules.values("pk"),
        next_attempt_at__lt=end,
        expires_at__gt=now,
    )
    if channel:
        queued = queued.filter(channel=channel)
    if patients is not None:
        queued = queued.filter(patients.q("patient_id"))
    rows = (
        queued.annotate(
            day=TruncDate(Greatest("next_attempt_at", now), tzinfo=timezone.get_current_timezone())
        )
        .order_by()
        .values("rule_id", "day", "channel")
        .annotate(n=Count("id"))
    )
    for row in rows:
        counts[row["rule_id"], row["day"], row["channel"]] += row["n"]


def _count_dues(
    counts: Counter[Key],
    rule: Rule,
    *,
    moments: list[datetime],
    profile: ClinicProfile,
    last: date,
    channel: str | None,
    patients: Patients | None,
) -> None:
    """Add what the planner would queue for `rule` at each of `moments` and has not yet."""
    templates = set(MessageTemplate.objects.filter(rule=rule).values_list("channel", "language"))
    # (patient, occurrence) counted on an earlier day's query: only the per-day path needs it
    # (the week's query hands each record's days over together).
    counted: set[tuple[int, str]] = set()
    remember = _repeats(rule) and _per_day(rule)
    # The visit survey asks a patient once per SURVEY_MIN_DAYS (longer than any forecast): once
    # the planner queued one, the patient is out of its later days' selections. Rows come in
    # no order of day, so a patient's counts wait until their first day is known.
    once_per_patient = rule.kind == RuleKind.VISIT_SURVEY
    asked: dict[int, list[tuple[datetime, Key | None]]] = {}
    zone = timezone.get_current_timezone()  # looked up once, not for each row
    rows = _week_rows(rule, moments=moments, profile=profile, patients=patients)
    while batch := list(islice(rows, BATCH)):
        existing = _existing_keys(rule, {dues[0][1].row["pid"] for dues in batch})
        for dues in batch:
            seen: set[str] = set()  # one record's occurrence due on several days: the first
            for moment, due in dues:
                key = (due.row["pid"], due.occurrence_key)
                if key in existing or key in counted or due.occurrence_key in seen:
                    continue
                decision = plan_decision(rule=rule, due=due, now=moment, profile=profile)
                if decision.skip is not None or decision.send_at is None:
                    continue
                on = decision.channel
                language = due.row["language"]
                if (on, language) not in templates and (on, FALLBACK_LANGUAGE) not in templates:
                    continue  # the planner skips it: no template for the channel
                seen.add(due.occurrence_key)
                if remember:
                    counted.add(key)
                day = decision.send_at.astimezone(zone).date()
                shown = not (day > last or (channel and on != channel))
                if once_per_patient:
                    asked.setdefault(due.row["pid"], []).append(
                        (moment, (rule.pk, day, on) if shown else None)
                    )
                elif shown:
                    counts[rule.pk, day, on] += 1
    for planned in asked.values():
        first = min(moment for moment, _slot in planned)
        for moment, slot in planned:
            if moment == first and slot is not None:
                counts[slot] += 1


def _repeats(rule: Rule) -> bool:
    """Whether one occurrence of `rule` can be due on more than one day: the planner queues it
    on the first and finds it in the outbox after, so the forecast must remember it. Recall
    keeps a patient due through its grace days; a dose near midnight is due from two days; a
    birthday or appointment key does not name the offset, so two offsets meet on one key."""
    if rule.kind in (RuleKind.RECALL, RuleKind.DOSE):
        return True
    return rule.kind in (RuleKind.BIRTHDAY, RuleKind.APPOINTMENT) and len(rule.offsets) > 1


def _per_day(rule: Rule) -> bool:
    """Whether the rule's due rows must be read one day at a time: the frequency cap of a
    relationship rule is counted at each day's moment, so its annotation differs by day."""
    return rule.purpose == Purpose.RELATIONSHIP


Occurrences = list[tuple[datetime, Due]]  # one due row's occurrences, by the moment they're due


def _week_rows(
    rule: Rule,
    *,
    moments: list[datetime],
    profile: ClinicProfile,
    patients: Patients | None,
) -> Iterator[Occurrences]:
    """The planner's due set for `rule` at each of `moments`, streamed, as each due row's
    occurrences with the moment they are decided at.

    The policy's annotations (consent per channel, contact points, the holdout) are the same
    whichever day a row is due, and computing them is most of the query's cost (PostgreSQL
    hashes the consent table once per query): so the week's selections are OR-ed into one
    query per rule, each row marked with the days it belongs to. A relationship rule's cap
    is counted at each moment: read one query per day instead (see _per_day)."""
    kind = KINDS[rule.kind]
    selections = [kind.select(rule, timezone.localdate(m), m, profile) for m in moments]
    ref = selections[0].patient_ref
    groups = [[i] for i in range(len(moments))] if _per_day(rule) else [list(range(len(moments)))]
    for group in groups:
        rows = reduce(or_, [selections[i].rows for i in group])
        marks: dict[str, Any] = {
            f"on_day_{i}": ExpressionWrapper(
                Q(pk__in=selections[i].rows.values("pk")), output_field=BooleanField()
            )
            for i in group
        }
        if len(group) == 1:
            marks = {f"on_day_{group[0]}": Value(True, output_field=BooleanField())}
        rows = _annotated(rule, rows, ref=ref, at=moments[group[0]]).annotate(**marks)
        if patients is not None:
            rows = rows.filter(patients.q(ref))
        order = rule.channel_order
        row: dict[str, Any]
        for row in rows.order_by().iterator(chunk_size=BATCH):
            # A row no channel of the rule may reach is one plan_decision can only skip:
            # passed over before its occurrences are worked out (a quarter to a third).
            if row["erased"] or not any(row[f"{c}_granted"] and row[f"{c}_address"] for c in order):
                continue
            dues = [
                (moments[i], due)
                for i in group
                if row[f"on_day_{i}"]
                for due in selections[i].expand(row)
            ]
            if dues:
                yield dues


def _annotated(rule: Rule, rows: QuerySet[Any], *, ref: str, at: datetime) -> QuerySet[Any]:
    """`rows` annotated as campaigns.planner.due_set annotates a kind's selection (its own
    due_annotations, so the decision reads the same facts).

    Without the withdrawals: plan_decision reads `<channel>_withdrawn` only to name why a row
    reaches no channel (withdrawn rather than never given), and such a row is a skip either
    way, which the forecast does not count. Each of those subqueries read the refused rows of
    the consent table, a third of the query's time."""
    annotations = due_annotations(rule, patient_ref=ref, at=at)
    for name in annotations:
        if name.endswith("_withdrawn"):
            annotations[name] = Value(False, output_field=BooleanField())
    annotated: QuerySet[Any] = rows.annotate(**annotations)
    return annotated.values(*annotations, *KINDS[rule.kind].fields)
