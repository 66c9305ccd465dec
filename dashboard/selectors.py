"""What the manager's dashboard reads: every figure is a SQL aggregate (conditional Count/Sum,
TruncWeek) over the outbox, the skips, appointments, refill windows, tasks and the consent
ledger, in a fixed number of queries whatever the number of rows. Python only does arithmetic
on the few totals that come back, and loops over rules and templates (tens), never over
patients or messages.

Which rows a filter selects, once for every section:
- the date range: a message by its due time, a skip by when it was recorded, an appointment by
  its start, a consent withdrawal by when it was recorded;
- rule and channel: the message's own; a skip has no channel, so with a channel chosen only the
  skips of rules that list that channel count;
- department and doctor: the patient has a visit or an appointment with that department or
  doctor (one definition for messages, skips and consent alike, since a skip and a birthday
  greeting name no department).

The outbox's counts (the funnel's steps, the appointment and recall outcomes, the delivery
trend) come from dashboard.MessageDay for the days the worker has summarised (every 5 minutes
for the last recall_days() + 5 days, nightly for all; dashboard.summary), and live from the
outbox for today, days ahead and any day not summarised; the page says when the summarised
days were counted. The summary counts each message also under every department and doctor of
its patient (dashboard.PatientGroup, the definition above as a view), so a department or
doctor filter reads it too.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Avg,
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, StrIndex, Substr, TruncWeek
from django.utils import timezone

from campaigns.costs import cost_expression, line_month_cost
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.templating import sms_size
from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose
from dashboard.filters import Filters
from dashboard.models import MessageDay, SummarisedDay
from dashboard.stats import Effect, relative_risk
from patients.imports.feed import failed_import_runs
from patients.models import Appointment, RefillWindow, Visit
from reminders.models import OutboxMessage, StaffTask, Status
from surveys.models import VisitRating

APPOINTMENT_KINDS = {RuleKind.APPOINTMENT}
REFILL_KINDS = {RuleKind.REFILL_OPENS, RuleKind.REFILL_CLOSES}
RECALL_KINDS = {RuleKind.RECALL}
# Handed to the provider: "dropped" never left us.
HANDED_OVER = [Status.SENT, Status.DELIVERED, Status.FAILED, Status.UNKNOWN]
FINAL_APPOINTMENT = [Appointment.Status.ATTENDED, Appointment.Status.NO_SHOW]


def recall_days() -> int:
    """How long after a recall a booking still counts as its outcome (days)."""
    return int(getattr(settings, "DASHBOARD_RECALL_DAYS", 30))


def min_group() -> int:
    """Fewer patients than this in either group and the effect is "not enough data yet"."""
    return int(getattr(settings, "DASHBOARD_MIN_GROUP", 30))


@contextmanager
def reads_without_jit() -> Iterator[None]:
    """Run the page's aggregates with PostgreSQL's JIT compiler off (in one read transaction).
    The planner's cost for an aggregate over a quarter of the outbox passes jit_above_cost, and
    EXPLAIN ANALYZE on 1 M messages showed 3.2 s of 5.3 s spent compiling 71 functions for a
    query that then runs in 2 s: the JIT pays off for long reports, not for a page."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
            # Room to hash a quarter's rows per rule in memory rather than sort them on disk
            # (EXPLAIN showed "external merge"); for this transaction only.
            cursor.execute("SET LOCAL work_mem = '32MB'")
        yield


# --- the rows each filter selects ---------------------------------------------------------------


def _patients_q(f: Filters, ref: str = "patient_id") -> Q:
    """Patients with a visit or appointment of the chosen department and doctor."""
    if not (f.department or f.doctor):
        return Q()
    where: dict[str, str] = {}
    if f.department:
        where["department"] = f.department
    if f.doctor:
        where["doctor"] = f.doctor
    # Two hashed probes per row ("IN visits OR IN appointments"): measured on 1 M messages,
    # five times faster than one list of patients built with EXISTS (which PostgreSQL joined
    # through the whole patients table in every query of the page).
    visits = Visit.objects.filter(**where).values("patient_id")
    appointments = Appointment.objects.filter(**where).values("patient_id")
    return Q(**{f"{ref}__in": visits}) | Q(**{f"{ref}__in": appointments})


def messages_in(f: Filters) -> QuerySet[OutboxMessage]:
    """The outbox rows the filters select (by due time)."""
    rows = OutboxMessage.objects.filter(due_at__gte=f.start_at, due_at__lt=f.end_at)
    if f.rule_id:
        rows = rows.filter(rule_id=f.rule_id)
    if f.channel:
        rows = rows.filter(channel=f.channel)
    return rows.filter(_patients_q(f)).order_by()


def skips_in(f: Filters, rules: list[Rule]) -> QuerySet[Skip]:
    """The skips the filters select (by when they were recorded)."""
    rows = Skip.objects.filter(at__gte=f.start_at, at__lt=f.end_at)
    if f.rule_id:
        rows = rows.filter(rule_id=f.rule_id)
    if f.channel:
        rows = rows.filter(rule_id__in=[r.pk for r in rules if f.channel in r.channel_order])
    return rows.filter(_patients_q(f)).order_by()


def rules_all() -> list[Rule]:
    return list(Rule.objects.order_by("priority", "name"))


# --- 1. the funnel ------------------------------------------------------------------------------


@dataclass
class FunnelRow:
    rule: Rule
    queued: int = 0  # outbox rows: every message planned, whatever became of it
    waiting: int = 0  # still queued or being sent
    skipped: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    unknown: int = 0
    replied: int = 0
    confirmed: int = 0
    # Outcomes, each counted once per appointment, refill window or patient.
    appointments: int = 0  # reminded appointments that have an outcome (attended or no-show)
    attended: int = 0
    no_show: int = 0
    recalled: int = 0
    booked: int = 0
    refills: int = 0
    picked_up: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def due(self) -> int:
        return self.queued + self.skipped_total

    @property
    def holdout(self) -> int:
        return self.skipped.get(SkipReason.HOLDOUT, 0)

    @property
    def outcome(self) -> tuple[int, int] | None:
        """(outcomes, of how many) for the rule's kind; None when the kind has no outcome."""
        kind = self.rule.kind
        if kind in APPOINTMENT_KINDS:
            return self.attended, self.appointments
        if kind in REFILL_KINDS:
            return self.picked_up, self.refills
        if kind in RECALL_KINDS:
            return self.booked, self.recalled
        return None


def _booked_after(moment: str, days: int) -> Exists:
    """An appointment (not cancelled) starting within `days` after the outer row's `moment`."""
    return Exists(
        Appointment.objects.filter(
            patient_id=OuterRef("patient_id"),
            starts_at__gt=OuterRef(moment),
            starts_at__lte=OuterRef(moment) + timedelta(days=days),
        ).exclude(status=Appointment.Status.CANCELLED)
    )


STEPS = ("queued", "waiting", "sent", "delivered", "failed", "dropped", "unknown", "replied")


def step_counts() -> dict[str, Count]:
    """What each funnel step counts among outbox rows (fresh expressions each call). Each
    counts due_at, never null, rather than id: the index message_dashboard holds due_at and
    not id, and counting id made PostgreSQL read every row from the table (7,500 heap pages
    for one day's 9,700 rows) instead of only the index."""
    return {
        "queued": Count("due_at"),
        "waiting": Count("due_at", filter=Q(status__in=[Status.QUEUED, Status.SENDING])),
        "sent": Count("due_at", filter=Q(sent_at__isnull=False)),
        "delivered": Count("due_at", filter=Q(status=Status.DELIVERED)),
        "failed": Count("due_at", filter=Q(status=Status.FAILED)),
        "dropped": Count("due_at", filter=Q(status=Status.DROPPED)),
        "unknown": Count("due_at", filter=Q(status=Status.UNKNOWN)),
        "replied": Count("due_at", filter=Q(replied_at__isnull=False)),
        "handed": Count("due_at", filter=Q(status__in=HANDED_OVER)),
    }


# What a message's outcome adds up to (counted by the message, at the time of counting).
OUTCOMES = ("confirmed", "appointments", "attended", "no_show", "recalled", "booked")
SUMMED = (*STEPS, "handed", *OUTCOMES)


def kind_ids(rules: list[Rule]) -> dict[str, list[int]]:
    return {
        "appointment": [r.pk for r in rules if r.kind in APPOINTMENT_KINDS],
        "refill": [r.pk for r in rules if r.kind in REFILL_KINDS],
        "recall": [r.pk for r in rules if r.kind in RECALL_KINDS],
    }


def counted_messages(
    messages: QuerySet[OutboxMessage], rules: list[Rule], group: dict[str, Any]
) -> list[dict[str, Any]]:
    """`messages` counted per rule, channel and the `group` annotations (a week or a day): the
    funnel's steps (no join; the covering index message_dashboard), the appointment and recall
    outcomes, the recalls that booked. Three queries at most.

    An appointment rule sends at most one message per appointment (its occurrence key names
    the appointment, campaigns/kinds.py), so counting its messages counts appointments; a recall
    is counted per message (one per patient and last visit)."""
    ids_of = kind_ids(rules)
    names = ("rule_id", "channel", *group)
    sent = Q(sent_at__isnull=False)
    in_appointment = Q(rule_id__in=ids_of["appointment"], appointment__isnull=False)
    in_recall = Q(rule_id__in=ids_of["recall"])
    queries: list[QuerySet[Any, dict[str, Any]]] = [
        messages.annotate(**group).values(*names).annotate(**step_counts()).order_by()
    ]
    if ids_of["appointment"] or ids_of["recall"]:
        queries.append(
            messages.filter(sent)
            .filter(in_appointment | in_recall)
            .annotate(**group)
            .values(*names)
            .annotate(
                # Confirmed by the patient's own answer (a reply or the LINE button) after the
                # message went out; a phone call or the desk is the staff's work.
                confirmed=Count(
                    "due_at",
                    filter=Q(
                        appointment__confirmed_via__in=[
                            Appointment.ConfirmedVia.REPLY,
                            Appointment.ConfirmedVia.LINE,
                        ],
                        appointment__confirmed_at__gte=F("sent_at"),
                    ),
                ),
                appointments=Count("due_at", filter=Q(appointment__status__in=FINAL_APPOINTMENT)),
                attended=Count("due_at", filter=Q(appointment__status=Appointment.Status.ATTENDED)),
                no_show=Count("due_at", filter=Q(appointment__status=Appointment.Status.NO_SHOW)),
                recalled=Count("due_at", filter=in_recall),
            )
            .order_by()
        )
    if ids_of["recall"]:
        # Its own query with the EXISTS in WHERE, where PostgreSQL joins the appointments
        # once (a semi-join) instead of probing them for every recall inside the aggregate.
        queries.append(
            messages.filter(sent, in_recall)
            .filter(_booked_after("sent_at", recall_days()))
            .annotate(**group)
            .values(*names)
            .annotate(booked=Count("due_at"))
            .order_by()
        )
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for query in queries:
        for row in query:  # per rule, channel and week or day: thousands at most
            key = tuple(row[name] for name in names)
            into = merged.setdefault(
                key, dict.fromkeys(SUMMED, 0) | dict(zip(names, key, strict=True))
            )
            into.update(row)
    return list(merged.values())


def _live_steps(f: Filters, rules: list[Rule]) -> list[dict[str, Any]]:
    counted = counted_messages(messages_in(f), rules, {"week": TruncWeek("due_at")})
    return [{**row, "week": _week(row["week"])} for row in counted]


def _spans(days: list[date]) -> list[tuple[date, date]]:
    """Sorted days as runs of consecutive days, (first, last) each."""
    spans: list[tuple[date, date]] = []
    for day in days:
        if spans and spans[-1][1] + timedelta(days=1) == day:
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return spans


def message_steps(f: Filters, rules: list[Rule] | None = None) -> list[dict[str, Any]]:
    """The outbox rows the filters select, counted per rule, channel and week (counted_messages):
    the funnel's steps and outcomes (summed per rule) and the delivery trend (per channel and
    week). A few hundred rows.

    Days the worker has summarised (dashboard.MessageDay, SummarisedDay) come from the summary
    (its rows for the chosen department and doctor, or for all when none is chosen); the rest
    (today, days ahead, any day not yet summarised) from the outbox itself, one query per run
    of such days."""
    rules = rules_all() if rules is None else rules
    last_summarised = min(f.end, timezone.localdate() - timedelta(days=1))
    summarised = set(
        SummarisedDay.objects.filter(day__gte=f.start, day__lte=last_summarised).values_list(
            "day", flat=True
        )
    )
    every_day = [f.start + timedelta(days=n) for n in range(f.days)]
    rows = []
    for first, last in _spans([day for day in every_day if day not in summarised]):
        rows += _live_steps(replace(f, start=first, end=last), rules)
    if summarised:
        days = MessageDay.objects.filter(
            day__gte=f.start, day__lte=last_summarised, department=f.department, doctor=f.doctor
        )
        if f.rule_id:
            days = days.filter(rule_id=f.rule_id)
        if f.channel:
            days = days.filter(channel=f.channel)
        rows += [
            dict(row)
            for row in days.values("rule_id", "channel", "week")
            .annotate(**{name: Sum(name) for name in SUMMED})
            .order_by()
        ]
    merged: dict[tuple[int, str, date], dict[str, Any]] = {}
    for row in rows:  # the live and summarised parts of a week added up
        key = (row["rule_id"], row["channel"], row["week"])
        if key in merged:
            for name in SUMMED:
                merged[key][name] += row[name]
        else:
            merged[key] = dict(row)
    return list(merged.values())


def summary_as_of(f: Filters) -> datetime | None:
    """When the oldest summarised day in the range was counted (None: all counted live)."""
    found = SummarisedDay.objects.filter(day__gte=f.start, day__lte=f.end).aggregate(
        oldest=Min("refreshed_at")
    )
    oldest: datetime | None = found["oldest"]
    return oldest


def funnel(
    f: Filters, rules: list[Rule], *, steps: list[dict[str, Any]] | None = None
) -> list[FunnelRow]:
    """Per rule: due → queued → skipped by reason → sent → delivered → failed/dropped/unknown →
    replied → confirmed, and the outcomes of what was sent: the steps and the appointment and
    recall outcomes from message_steps (`steps` when the caller has them already), then the
    refill outcomes (the only DISTINCT count: a window gets a message per offset, so it is
    never summarised per day) and the skips."""
    ids_of = kind_ids(rules)
    if steps is None:
        steps = message_steps(f, rules)
    refills = (
        messages_in(f)
        .filter(sent_at__isnull=False, rule_id__in=ids_of["refill"], refill_window__isnull=False)
        .values("rule_id")
        .annotate(
            refills=Count("refill_window_id", distinct=True),
            picked_up=Count(
                "refill_window_id",
                distinct=True,
                filter=Q(refill_window__picked_up_on__isnull=False),
            ),
        )
    )
    rows = {r.pk: FunnelRow(rule=r) for r in rules}
    for counted in steps:  # per rule, channel and week: a few hundred rows at most
        row = rows[counted["rule_id"]]
        for name in (*STEPS, *OUTCOMES):
            setattr(row, name, getattr(row, name) + counted[name])
    for counts in refills if ids_of["refill"] else []:
        row = rows[counts["rule_id"]]
        row.refills, row.picked_up = counts["refills"], counts["picked_up"]
    skip_counts = skips_in(f, rules).values_list("rule_id", "reason").annotate(n=Count("id"))
    for rule_id, reason, n in skip_counts:
        rows[rule_id].skipped[reason] = n
    wanted = [r.pk for r in rules if not f.rule_id or r.pk == f.rule_id]
    return [rows[pk] for pk in wanted if rows[pk].due or rows[pk].rule.enabled]


# --- 2. the effect ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectRow:
    rule: Rule
    comparison: str  # "holdout", "before" (same length before enabled_since) or "" (none)
    effect: Effect | None


def _reference_id() -> Case:
    """The appointment or refill window id in a skip's occurrence key ("appointment:<id>:…",
    "refill:<id>:…", campaigns/kinds.py); NULL for other kinds."""
    after_kind = Substr("occurrence_key", StrIndex("occurrence_key", Value(":")) + 1)
    number = Substr(after_kind, 1, StrIndex(after_kind, Value(":")) - 1)
    return Case(
        When(
            Q(occurrence_key__startswith="appointment:") | Q(occurrence_key__startswith="refill:"),
            then=Cast(number, IntegerField()),
        ),
        default=None,
        output_field=IntegerField(),
    )


def _holdout_counts(f: Filters, rules: list[Rule]) -> dict[int, tuple[int, int]]:
    """Per rule, (outcomes, of how many) among the held-out patients: one query."""
    ids = {
        "appointment": [r.pk for r in rules if r.kind in APPOINTMENT_KINDS],
        "refill": [r.pk for r in rules if r.kind in REFILL_KINDS],
        "recall": [r.pk for r in rules if r.kind in RECALL_KINDS],
    }
    final = Appointment.objects.filter(pk=OuterRef("ref"), status__in=FINAL_APPOINTMENT)
    attended = final.filter(status=Appointment.Status.ATTENDED)
    window = RefillWindow.objects.filter(pk=OuterRef("ref"))
    in_appointment, in_refill = Q(rule_id__in=ids["appointment"]), Q(rule_id__in=ids["refill"])
    in_recall = Q(rule_id__in=ids["recall"])
    rows = (
        skips_in(f, rules)
        .filter(reason=SkipReason.HOLDOUT, rule_id__in=[r.pk for r in rules])
        .annotate(ref=_reference_id())
        .values("rule_id")
        .annotate(
            appointments=Count("ref", distinct=True, filter=in_appointment & Q(Exists(final))),
            attended=Count("ref", distinct=True, filter=in_appointment & Q(Exists(attended))),
            refills=Count("ref", distinct=True, filter=in_refill & Q(Exists(window))),
            picked_up=Count(
                "ref",
                distinct=True,
                filter=in_refill & Q(Exists(window.filter(picked_up_on__isnull=False))),
            ),
            recalled=Count("patient_id", distinct=True, filter=in_recall),
            booked=Count(
                "patient_id",
                distinct=True,
                filter=in_recall & Q(_booked_after("at", recall_days())),
            ),
        )
    )
    kinds = {r.pk: r.kind for r in rules}
    counts: dict[int, tuple[int, int]] = {}
    for row in rows:
        kind = kinds[row["rule_id"]]
        if kind in APPOINTMENT_KINDS:
            counts[row["rule_id"]] = (row["attended"], row["appointments"])
        elif kind in REFILL_KINDS:
            counts[row["rule_id"]] = (row["picked_up"], row["refills"])
        elif kind in RECALL_KINDS:
            counts[row["rule_id"]] = (row["booked"], row["recalled"])
    return counts


def _before_counts(f: Filters, rules: list[Rule]) -> dict[int, tuple[int, int]]:
    """Per rule without a holdout but with a switch-on time: the outcome among all
    appointments (or refill windows) in the same length of time just before it. Two queries
    at most, one aggregate per rule in each."""
    length = timedelta(days=f.days)
    appointment_aggs: dict[str, Any] = {}
    refill_aggs: dict[str, Any] = {}
    for rule in rules:
        if rule.enabled_since is None:
            continue
        start, end = rule.enabled_since - length, rule.enabled_since
        if rule.kind in APPOINTMENT_KINDS:
            period = Q(starts_at__gte=start, starts_at__lt=end)
            if rule.departments:
                period &= Q(department__in=rule.departments)
            appointment_aggs[f"n{rule.pk}"] = Count("id", filter=period)
            appointment_aggs[f"a{rule.pk}"] = Count(
                "id", filter=period & Q(status=Appointment.Status.ATTENDED)
            )
        elif rule.kind in REFILL_KINDS:
            period = Q(
                closes_on__gte=timezone.localtime(start).date(),
                closes_on__lt=timezone.localtime(end).date(),
            )
            refill_aggs[f"n{rule.pk}"] = Count("id", filter=period)
            refill_aggs[f"a{rule.pk}"] = Count("id", filter=period & Q(picked_up_on__isnull=False))
    totals: dict[str, int] = {}
    if appointment_aggs:
        appointments = Appointment.objects.filter(status__in=FINAL_APPOINTMENT)
        where = {k: v for k, v in (("department", f.department), ("doctor", f.doctor)) if v}
        totals |= appointments.filter(**where).aggregate(**appointment_aggs)
    if refill_aggs:
        windows = RefillWindow.objects.filter(_patients_q(f, "prescription__patient_id"))
        totals |= windows.aggregate(**refill_aggs)
    return {
        int(key[1:]): (totals[f"a{key[1:]}"], value)
        for key, value in totals.items()
        if key.startswith("n")
    }


def effects(f: Filters, funnel_rows: list[FunnelRow]) -> list[EffectRow]:
    """Per rule with an outcome: the outcome rate with the message (those sent it) against
    without (held out; or, for a rule with no holdout, the same length of time before it was
    switched on), as a relative risk with its 95 % interval."""
    rules = [row.rule for row in funnel_rows if row.outcome is not None]
    with_holdout = [r for r in rules if r.holdout_percent > 0]
    held = _holdout_counts(f, with_holdout) if with_holdout else {}
    before_rules = [r for r in rules if r.holdout_percent == 0 and r.enabled_since]
    before = _before_counts(f, before_rules) if before_rules else {}
    result = []
    for row in funnel_rows:
        treated = row.outcome
        if treated is None:
            continue
        rule = row.rule
        if rule.pk in held or rule.holdout_percent > 0:
            control, comparison = held.get(rule.pk, (0, 0)), "holdout"
        elif rule.pk in before:
            control, comparison = before[rule.pk], "before"
        else:
            result.append(EffectRow(rule=rule, comparison="", effect=None))
            continue
        effect = relative_risk(
            treated[0], treated[1], control[0], control[1], min_group=min_group()
        )
        result.append(EffectRow(rule=rule, comparison=comparison, effect=effect))
    return result


# --- 3. trends ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeekRate:
    week: date
    part: int
    whole: int

    @property
    def rate(self) -> float | None:
        return self.part / self.whole if self.whole else None


@dataclass
class Trends:
    no_show: list[WeekRate]
    confirmed: list[WeekRate]
    delivery: dict[str, list[WeekRate]]  # per channel
    opt_out: list[tuple[str, str, int, int]]  # purpose, channel, withdrawals, consented


def _week(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


def trends(f: Filters, *, steps: list[dict[str, Any]] | None = None) -> Trends:
    """Weekly no-show, confirmation and delivery rates and the opt-out rate: four queries,
    three with `steps` (message_steps, shared with the funnel)."""
    appointments = Appointment.objects.filter(starts_at__gte=f.start_at, starts_at__lt=f.end_at)
    where = {k: v for k, v in (("department", f.department), ("doctor", f.doctor)) if v}
    appointments = appointments.filter(**where)
    if f.rule_id or f.channel:
        # The appointments the chosen rule or channel reminded.
        appointments = appointments.filter(
            pk__in=messages_in(f).filter(appointment__isnull=False).values("appointment_id")
        )
    weekly = (
        appointments.order_by()
        .annotate(week=TruncWeek("starts_at"))
        .values("week")
        .annotate(
            final=Count("id", filter=Q(status__in=FINAL_APPOINTMENT)),
            no_show=Count("id", filter=Q(status=Appointment.Status.NO_SHOW)),
            booked=Count("id", filter=~Q(status=Appointment.Status.CANCELLED)),
            confirmed=Count(
                "id",
                filter=~Q(status=Appointment.Status.CANCELLED) & Q(confirmed_at__isnull=False),
            ),
        )
        .order_by("week")
    )
    no_show, confirmed = [], []
    for row in weekly:
        no_show.append(WeekRate(_week(row["week"]), row["no_show"], row["final"]))
        confirmed.append(WeekRate(_week(row["week"]), row["confirmed"], row["booked"]))
    if steps is None:
        steps = message_steps(f)
    per_week: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0, 0])
    for counted in steps:  # per rule, channel and week: a few hundred rows at most
        sums = per_week[(counted["channel"], _week(counted["week"]))]
        sums[0] += counted["delivered"]
        sums[1] += counted["handed"]
    delivery: dict[str, list[WeekRate]] = defaultdict(list)
    for (channel, week), (delivered, handed) in sorted(per_week.items()):
        delivery[channel].append(WeekRate(week, delivered, handed))
    return Trends(no_show, confirmed, dict(delivery), opt_outs(f))


def opt_outs(f: Filters) -> list[tuple[str, str, int, int]]:
    """Per purpose and channel: withdrawals recorded in the range, and the patients who had
    consent (consenting now, plus those who withdrew in the range). Two queries."""
    withdrawals = ConsentEntry.objects.filter(
        action=Action.WITHDRAW, recorded_at__gte=f.start_at, recorded_at__lt=f.end_at
    ).filter(_patients_q(f))
    granted = ConsentState.objects.filter(granted=True).filter(_patients_q(f))
    if f.channel:
        withdrawals, granted = (
            withdrawals.filter(channel=f.channel),
            granted.filter(channel=f.channel),
        )
    if f.rule_id:
        purpose = Rule.objects.filter(pk=f.rule_id).values("purpose")
        withdrawals = withdrawals.filter(purpose__in=purpose)
        granted = granted.filter(purpose__in=purpose)
    out: dict[tuple[str, str], int] = {
        (p, c): n
        for p, c, n in withdrawals.order_by()
        .values_list("purpose", "channel")
        .annotate(n=Count("patient_id", distinct=True))
    }
    now: dict[tuple[str, str], int] = {
        (p, c): n
        for p, c, n in granted.order_by().values_list("purpose", "channel").annotate(n=Count("id"))
    }
    return [
        (purpose, channel, out.get((purpose, channel), 0), now.get((purpose, channel), 0))
        for purpose in Purpose.values
        for channel in Channel.values
        if (purpose, channel) in out or (purpose, channel) in now
    ]


@dataclass(frozen=True)
class RatingRow:
    """Visit ratings of one group (a week, a department, a doctor): how many, and their mean."""

    week: date | None
    department: str
    doctor: str
    count: int
    average: float | None


def visit_ratings(f: Filters) -> tuple[list[RatingRow], list[RatingRow]]:
    """How was your visit? (surveys): the count and mean rating per department and doctor over
    the range, and per week and department; two aggregates. A rating is in the range by when it
    was given, and in a department or doctor by the visit it rates (not by the patient's other
    visits); rule and channel are the survey message's."""
    rows = VisitRating.objects.filter(rated_at__gte=f.start_at, rated_at__lt=f.end_at)
    where = {k: v for k, v in (("department", f.department), ("doctor", f.doctor)) if v}
    rows = rows.filter(**where)
    if f.channel:
        rows = rows.filter(channel=f.channel)
    if f.rule_id:
        rows = rows.filter(message__rule_id=f.rule_id)
    rows = rows.order_by()
    by_doctor = [
        RatingRow(None, r["department"], r["doctor"], r["n"], r["mean"])
        for r in rows.values("department", "doctor")
        .annotate(n=Count("id"), mean=Avg("rating"))
        .order_by("department", "doctor")
    ]
    by_week = [
        RatingRow(_week(r["week"]), r["department"], "", r["n"], r["mean"])
        for r in rows.annotate(week=TruncWeek("rated_at"))
        .values("week", "department")
        .annotate(n=Count("id"), mean=Avg("rating"))
        .order_by("week", "department")
    ]
    return by_doctor, by_week


# --- 4. cost and quota --------------------------------------------------------------------------


@dataclass(frozen=True)
class CostRow:
    rule: Rule
    sms: int
    segments: int
    line: int
    email: int
    sms_cost: Decimal = Decimal(0)  # NT$, at campaigns.costs' price per segment and country
    email_cost: Decimal = Decimal(0)


@dataclass
class Costs:
    month_start: date
    days_so_far: int
    days_in_month: int
    rows: list[CostRow]
    line_allowance: int | None
    line_account: int = 0  # every LINE message this month, whatever the filters: the quota's

    @property
    def line_cost(self) -> Decimal:
        """This month's LINE messages beyond the account's free allowance, priced."""
        return line_month_cost(self.line_account)

    @property
    def line_cost_projected(self) -> Decimal:
        return line_month_cost(self.projected(self.line_account))

    @property
    def totals(self) -> CostRow | None:
        if not self.rows:
            return None
        return CostRow(
            rule=self.rows[0].rule,
            sms=sum(r.sms for r in self.rows),
            segments=sum(r.segments for r in self.rows),
            line=sum(r.line for r in self.rows),
            email=sum(r.email for r in self.rows),
            sms_cost=sum((r.sms_cost for r in self.rows), Decimal(0)),
            email_cost=sum((r.email_cost for r in self.rows), Decimal(0)),
        )

    def projected(self, value: int) -> int:
        """`value` so far this month carried on at the same daily pace to the month's end."""
        return round(value * self.days_in_month / self.days_so_far) if self.days_so_far else 0

    def projected_cost(self, value: Decimal) -> Decimal:
        if not self.days_so_far:
            return Decimal(0)
        return (value * self.days_in_month / self.days_so_far).quantize(Decimal("0.01"))


def costs(f: Filters, rules: list[Rule], *, today: date | None = None) -> Costs:
    """This calendar month so far (whatever the date range): SMS messages, segments and their
    cost, LINE messages and e-mails handed to the provider, per rule; and the account's LINE
    messages against its allowance. Two queries."""
    today = today or timezone.localdate()
    month_start = today.replace(day=1)
    start_at = Filters(range=f.range, start=month_start, end=today).start_at
    end_at = Filters(range=f.range, start=today, end=today).end_at
    rows = OutboxMessage.objects.filter(sent_at__gte=start_at, sent_at__lt=end_at)
    if f.rule_id:
        rows = rows.filter(rule_id=f.rule_id)
    if f.channel:
        rows = rows.filter(channel=f.channel)
    per_rule = (
        rows.filter(_patients_q(f))
        .order_by()
        .values("rule_id")
        .annotate(
            sms=Count("id", filter=Q(channel=Channel.SMS)),
            # Not named "segments": cost_expression's F("segments") would find it.
            sms_segments=Sum("segments", filter=Q(channel=Channel.SMS), default=0),
            line=Count("id", filter=Q(channel=Channel.LINE)),
            email=Count("id", filter=Q(channel=Channel.EMAIL)),
            sms_cost=Sum(cost_expression(), filter=Q(channel=Channel.SMS), default=Decimal(0)),
            email_cost=Sum(cost_expression(), filter=Q(channel=Channel.EMAIL), default=Decimal(0)),
        )
    )
    by_id = {r.pk: r for r in rules}
    result = [
        CostRow(
            by_id[row["rule_id"]],
            row["sms"],
            row["sms_segments"],
            row["line"],
            row["email"],
            Decimal(row["sms_cost"]),
            Decimal(row["email_cost"]),
        )
        for row in per_rule
    ]
    line_account = OutboxMessage.objects.filter(
        sent_at__gte=start_at, sent_at__lt=end_at, channel=Channel.LINE
    ).count()
    result.sort(key=lambda row: (row.rule.priority, row.rule.name))
    return Costs(
        month_start=month_start,
        days_so_far=today.day,
        days_in_month=calendar.monthrange(today.year, today.month)[1],
        rows=result,
        line_allowance=int(settings.LINE_MONTHLY_ALLOWANCE),
        line_account=line_account,
    )


# --- 6. needs attention -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attention:
    failed: int
    unknown: int
    open_tasks: int
    overdue_tasks: int
    no_channel: int  # open "appointment soon, no way to remind" tasks (made hourly)
    rules_missing_template: list[tuple[Rule, list[str]]]
    rules_near_cap: list[tuple[Rule, int]]  # rule, its longest SMS template's segments
    failed_imports: int = 0  # daily-feed files refused or failed in the period: nothing applied


def attention(
    f: Filters,
    rules: list[Rule],
    *,
    today: date | None = None,
    funnel_rows: list[FunnelRow] | None = None,
) -> Attention:
    """What someone should look at. Two queries, three without `funnel_rows` (the page's
    funnel for the same filters, whose failed and unknown counts are these: one scan of the
    outbox fewer)."""
    today = today or timezone.localdate()
    if funnel_rows is not None:
        messages = {
            "failed": sum(row.failed for row in funnel_rows),
            "unknown": sum(row.unknown for row in funnel_rows),
        }
    else:
        messages = messages_in(f).aggregate(
            failed=Count("id", filter=Q(status=Status.FAILED)),
            unknown=Count("id", filter=Q(status=Status.UNKNOWN)),
        )
    tasks = StaffTask.objects.filter(done_at__isnull=True).aggregate(
        open=Count("id"),
        overdue=Count("id", filter=Q(until__lt=today)),
        no_channel=Count("id", filter=Q(kind=StaffTask.Kind.CALL_NO_CHANNEL)),
    )
    # Tens of templates: their sizes are worked out here, not stored.
    templates = list(MessageTemplate.objects.values_list("rule_id", "channel", "body"))
    has: dict[int, set[str]] = defaultdict(set)
    longest: dict[int, int] = defaultdict(int)
    for rule_id, channel, body in templates:
        has[rule_id].add(channel)
        if channel == Channel.SMS:
            longest[rule_id] = max(longest[rule_id], sms_size(body).segments)
    cap = int(settings.SMS_MAX_SEGMENTS)
    missing = [
        (rule, [c for c in rule.channel_order if c not in has[rule.pk]])
        for rule in rules
        if rule.enabled and any(c not in has[rule.pk] for c in rule.channel_order)
    ]
    near = [(rule, longest[rule.pk]) for rule in rules if longest[rule.pk] >= max(cap - 1, 1)]
    failed_imports = (
        failed_import_runs(since=f.start_at).filter(queued_at__lt=f.end_at).order_by().count()
    )
    return Attention(
        failed=messages["failed"],
        unknown=messages["unknown"],
        open_tasks=tasks["open"],
        overdue_tasks=tasks["overdue"],
        no_channel=tasks["no_channel"],
        rules_missing_template=missing,
        rules_near_cap=near,
        failed_imports=failed_imports,
    )


# --- the filter form's choices ------------------------------------------------------------------


def departments_and_doctors() -> tuple[list[str], list[str]]:
    """The departments and doctors of appointments, for the filter's lists: two queries."""
    appointments = Appointment.objects.order_by()
    departments = appointments.values_list("department", flat=True).distinct()
    doctors = appointments.values_list("doctor", flat=True).distinct()
    return sorted(departments), sorted(doctors)
