"""Deciding what is due: every enabled rule, one set-based query each, into the outbox.

For each rule a selector returns the *due set*: one row per (patient, occurrence) whose anchor
(birthday, discharge, dose, refill window, appointment, last visit) plus an offset falls today,
annotated in the same query with everything the decision needs (consent per channel, contact
points, audience facts, recent relationship messages). Python then only walks the due set,
never the patient table. Rows go in with bulk inserts; the unique key (rule, patient,
occurrence) makes planning idempotent, also when two workers plan at once.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from campaigns.context import message_context
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.sendwindow import at_local, day_bounds, fit
from campaigns.templating import render
from consent.selectors import choose_channel, consent_annotations, patient_prefix
from patients.models import (
    Appointment,
    ClinicProfile,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
    age_on,
)
from reminders.models import OutboxMessage, StaffTask, Status

log = logging.getLogger(__name__)

RECALL_GRACE_DAYS = 7  # a recall missed while the worker was down is still sent this late
DOSE_LOOKAHEAD = timedelta(hours=24)
CAP_WINDOW = timedelta(days=30)
COUNTED = [Status.QUEUED, Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNKNOWN]


@dataclass
class Due:
    """One patient due for one occurrence of a rule."""

    row: dict  # the annotated values from the rule's query
    occurrence_key: str
    due_at: datetime
    expires_at: datetime
    refs: dict = field(default_factory=dict)  # appointment_id, procedure_id, …
    anchor_at: datetime | None = None


@dataclass
class PlanResult:
    queued: int = 0
    skipped: Counter = field(default_factory=Counter)


def days_in(days: list[date], field_name: str) -> Q:
    """`field_name` (a datetime) falls on any of `days` in the clinic's time zone."""
    q = Q()
    for day in days:
        start, end = day_bounds(day)
        q |= Q(**{f"{field_name}__gte": start, f"{field_name}__lt": end})
    return q


# --- the due set of each kind --------------------------------------------------------------------
# Each returns (queryset of values, patient path, function turning a row into Due objects).


def _birthday(rule: Rule, today: date, now: datetime):
    targets = {}
    for offset in rule.offsets:
        birthday = today - timedelta(days=offset)
        targets[birthday.month * 100 + birthday.day] = birthday
        if (birthday.month, birthday.day) == (2, 28) and not _leap(birthday.year):
            targets[229] = birthday  # born on Feb 29: greeted on Feb 28 in common years
    qs = Patient.objects.filter(birth_mmdd__in=list(targets), birth_date__isnull=False)

    def expand(row):
        birthday = targets[row["birth_mmdd"]]
        yield Due(
            row,
            f"birthday:{birthday.isoformat()}",
            at_local(today, rule.send_time),
            day_bounds(today)[1],
        )

    return qs, "id", expand


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _postop(rule: Rule, today: date, now: datetime):
    discharge_days = {today - timedelta(days=o): o for o in rule.offsets}
    qs = Procedure.objects.filter(days_in(list(discharge_days), "discharged_at"))
    if rule.care_plan_key:
        qs = qs.filter(care_plan_key=rule.care_plan_key)
    qs = qs.annotate(procedure_id=F("id"), discharged=F("discharged_at"))

    def expand(row):
        discharged = row["discharged"]
        offset = discharge_days[timezone.localtime(discharged).date()]
        due = discharged if offset == 0 else at_local(today, rule.send_time)
        yield Due(
            row,
            f"procedure:{row['procedure_id']}:day{offset}",
            due,
            day_bounds(today)[1],
            refs={"procedure_id": row["procedure_id"]},
        )

    return qs, "patient_id", expand


def _dose(rule: Rule, today: date, now: datetime):
    longest_course = 90
    qs = Prescription.objects.filter(
        dose_reminders=True,
        start_date__lte=today + timedelta(days=1),
        start_date__gt=today - timedelta(days=longest_course),
    ).exclude(frequency="PRN")
    qs = qs.annotate(
        prescription_id=F("id"),
        start=F("start_date"),
        days=F("days_supplied"),
        times=F("dose_times"),
    )

    def expand(row):
        last_day = row["start"] + timedelta(days=row["days"] - 1)
        for day in (today, today + timedelta(days=1)):
            if not row["start"] <= day <= last_day:
                continue
            for clock in row["times"] or []:
                dose_at = at_local(day, time.fromisoformat(clock))
                for minutes in rule.offsets:
                    due = dose_at - timedelta(minutes=minutes)
                    if dose_at > now and due <= now + DOSE_LOOKAHEAD:
                        yield Due(
                            row,
                            f"dose:{row['prescription_id']}:{day.isoformat()}T{clock}:{minutes}",
                            due,
                            dose_at,
                            refs={"prescription_id": row["prescription_id"]},
                            anchor_at=dose_at,
                        )

    return qs, "patient_id", expand


def _refill(rule: Rule, today: date, now: datetime, *, anchor: str):
    targets = {today - timedelta(days=o): o for o in rule.offsets}
    qs = RefillWindow.objects.filter(
        **{f"{anchor}__in": list(targets)},
        picked_up_on__isnull=True,
        prescription__refill_reminders=True,
    ).annotate(
        window_id=F("id"),
        rx_id=F("prescription_id"),
        window_opens=F("opens_on"),
        window_closes=F("closes_on"),
        anchor_day=F(anchor),
    )

    def expand(row):
        offset = targets[row["anchor_day"]]
        yield Due(
            row,
            f"refill:{row['window_id']}:{anchor}{offset:+d}",
            at_local(today, rule.send_time),
            day_bounds(row["window_closes"])[1],
            refs={"refill_window_id": row["window_id"], "prescription_id": row["rx_id"]},
            # The window as the text states it, from its opening to the end of its last day:
            # the gate drops the message if the window moves before it goes out.
            anchor_at=day_bounds(row["window_opens"])[0],
        )

    return qs, "prescription__patient_id", expand


def _appointment(rule: Rule, today: date, now: datetime):
    visit_days = {today - timedelta(days=o): o for o in rule.offsets}
    qs = Appointment.objects.filter(
        days_in(list(visit_days), "starts_at"),
        status__in=[Appointment.Status.BOOKED, Appointment.Status.CONFIRMED],
    ).annotate(
        appointment_id=F("id"),
        starts=F("starts_at"),
        appointment_status=F("status"),
        visit_department=F("department"),
    )

    def expand(row):
        yield Due(
            row,
            f"appointment:{row['appointment_id']}:{row['starts'].astimezone(UTC).isoformat()}",
            at_local(today, rule.send_time),
            row["starts"],
            refs={"appointment_id": row["appointment_id"]},
            anchor_at=row["starts"],
        )

    return qs, "patient_id", expand


def _recall(rule: Rule, today: date, now: datetime):
    offset = max(rule.offsets)
    latest_allowed = today - timedelta(days=offset)
    earliest = latest_allowed - timedelta(days=RECALL_GRACE_DAYS)
    visits = Visit.objects.filter(patient_id=OuterRef("id"))
    future = Appointment.objects.filter(
        patient_id=OuterRef("id"),
        starts_at__gte=now,
        status__in=[Appointment.Status.BOOKED, Appointment.Status.CONFIRMED],
    )
    last = visits.order_by("-visited_on", "-id")
    qs = Patient.objects.filter(
        Exists(visits.filter(visited_on__gte=earliest, visited_on__lte=latest_allowed)),
        ~Exists(visits.filter(visited_on__gt=latest_allowed)),
        ~Exists(future),
    ).annotate(
        last_visit=Subquery(last.values("visited_on")[:1]),
        visit_department=Subquery(last.values("department")[:1]),
    )
    if not rule.conditions.exists():  # no tags chosen: anyone with a chronic condition
        qs = qs.filter(Exists(Patient.conditions.through.objects.filter(patient_id=OuterRef("id"))))

    def expand(row):
        yield Due(
            row,
            f"recall:{row['last_visit'].isoformat()}",
            at_local(today, rule.send_time),
            day_bounds(today)[1],
        )

    return qs, "id", expand


SELECTORS = {
    RuleKind.BIRTHDAY: _birthday,
    RuleKind.POSTOP: _postop,
    RuleKind.DOSE: _dose,
    RuleKind.REFILL_OPENS: lambda r, t, n: _refill(r, t, n, anchor="opens_on"),
    RuleKind.REFILL_CLOSES: lambda r, t, n: _refill(r, t, n, anchor="closes_on"),
    RuleKind.APPOINTMENT: _appointment,
    RuleKind.RECALL: _recall,
}


def due_set(rule: Rule, *, now: datetime) -> tuple[QuerySet, callable]:
    """The rule's due rows, annotated for the decision, as one query; and their expander."""
    today = timezone.localdate(now)
    qs, patient_ref, expand = SELECTORS[rule.kind](rule, today, now)
    prefix = patient_prefix(patient_ref)
    annotations = {
        "pid": F(patient_ref),
        "birth": F(f"{prefix}birth_date"),
        "patient_sex": F(f"{prefix}sex"),
        "language": F(f"{prefix}preferred_language"),
        "preferred": F(f"{prefix}preferred_channel"),
        **consent_annotations(
            purpose=rule.purpose, channels=rule.channel_order, patient_ref=patient_ref
        ),
    }
    if rule.conditions.exists():
        annotations["in_conditions"] = Exists(
            Patient.conditions.through.objects.filter(
                patient_id=OuterRef(patient_ref), condition__in=rule.conditions.all()
            )
        )
    if rule.purpose == "relationship":
        recent = (
            OutboxMessage.objects.filter(
                patient_id=OuterRef(patient_ref),
                purpose="relationship",
                status__in=COUNTED,
                due_at__gte=now - CAP_WINDOW,
            )
            .order_by()
            .values("patient_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        annotations["recent_relationship"] = Subquery(recent)
    fields = [*annotations, *_extra_fields(rule.kind)]
    return qs.annotate(**annotations).values(*fields), expand


def _extra_fields(kind: str) -> list[str]:
    return {
        RuleKind.BIRTHDAY: ["birth_mmdd"],
        RuleKind.POSTOP: ["procedure_id", "discharged"],
        RuleKind.DOSE: ["prescription_id", "start", "days", "times"],
        RuleKind.REFILL_OPENS: [
            "window_id",
            "rx_id",
            "window_opens",
            "window_closes",
            "anchor_day",
        ],
        RuleKind.REFILL_CLOSES: [
            "window_id",
            "rx_id",
            "window_opens",
            "window_closes",
            "anchor_day",
        ],
        RuleKind.APPOINTMENT: [
            "appointment_id",
            "starts",
            "appointment_status",
            "visit_department",
        ],
        RuleKind.RECALL: ["last_visit", "visit_department"],
    }[kind]


def outside_audience(rule: Rule, row: dict, today: date) -> bool:
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


def channel_order_for(rule: Rule, preferred: str) -> list[str]:
    """The rule's channels, with the patient's preferred one first when the rule allows it."""
    order = list(rule.channel_order)
    if preferred in order:
        order.remove(preferred)
        order.insert(0, preferred)
    return order


def _reason(rule: Rule, row: dict, today: date) -> tuple[str | None, str | None]:
    """(channel, None) to queue, or (None, skip reason)."""
    if row["erased"]:
        return None, SkipReason.ERASED
    if outside_audience(rule, row, today):
        return None, SkipReason.OUTSIDE_AUDIENCE
    if rule.asks_confirmation and row.get("appointment_status") == Appointment.Status.CONFIRMED:
        return None, SkipReason.ALREADY_CONFIRMED
    cap = settings.RELATIONSHIP_MESSAGES_PER_30_DAYS
    if (row.get("recent_relationship") or 0) >= cap and rule.purpose == "relationship":
        return None, SkipReason.FREQUENCY_CAP
    decision = choose_channel(row, channel_order_for(rule, row["preferred"]))
    if not decision.allowed:
        return None, decision.reason
    return decision.reason, None


def plan_rule(rule: Rule, *, now: datetime, profile: ClinicProfile, dry_run=False) -> PlanResult:
    """Queue what `rule` has due at `now`; record why each other due patient got nothing."""
    today = timezone.localdate(now)
    rows, expand = due_set(rule, now=now)
    dues = [due for row in rows for due in expand(row)]
    existing = _existing_keys(rule, [d.row["pid"] for d in dues])
    result = PlanResult()
    to_queue: list[tuple[Due, str, datetime]] = []
    skips: list[Skip] = []
    for due in dues:
        if (due.row["pid"], due.occurrence_key) in existing:
            continue
        channel, reason = _reason(rule, due.row, today)
        send_at = fit(due.due_at, due.expires_at, profile) if channel else None
        if channel and send_at is None:
            reason = SkipReason.STALE
        if reason:
            result.skipped[reason] += 1
            skips.append(_skip(rule, due, reason, now))
        else:
            to_queue.append((due, channel, send_at))
    messages = _render_all(rule, to_queue, profile, result, skips, now)
    if not dry_run:
        OutboxMessage.objects.bulk_create(messages, batch_size=1000, ignore_conflicts=True)
        Skip.objects.bulk_create(
            skips,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["rule", "patient", "occurrence_key"],
            update_fields=["reason", "at"],
        )
        if rule.kind == RuleKind.POSTOP and rule.staff_call:
            _plan_call_tasks(rule, today)
    result.queued = len(messages)
    return result


def _existing_keys(rule: Rule, patient_ids: list[int]) -> set[tuple[int, str]]:
    keys = set()
    unique_ids = sorted(set(patient_ids))
    for start in range(0, len(unique_ids), 5000):
        chunk = unique_ids[start : start + 5000]
        keys.update(
            OutboxMessage.objects.filter(rule=rule, patient_id__in=chunk).values_list(
                "patient_id", "occurrence_key"
            )
        )
    return keys


def _texts(templates: dict, channel: str, language: str, context: dict) -> list[str] | None:
    """[subject, body] of the rule's template for `channel` in `language` (else zh-Hant)."""
    template = templates.get((channel, language)) or templates.get((channel, "zh-hant"))
    if template is None:
        return None
    return [render(template.subject, context), render(template.body, context)]


def _render_all(rule, to_queue, profile, result, skips, now) -> list[OutboxMessage]:
    """Outbox rows for the due patients, with the texts of the chosen and later channels."""
    templates = {(t.channel, t.language): t for t in MessageTemplate.objects.filter(rule=rule)}
    patients = Patient.objects.in_bulk({due.row["pid"] for due, _c, _s in to_queue})
    related = _load_related(to_queue)
    messages = []
    for due, channel, send_at in to_queue:
        patient = patients[due.row["pid"]]
        context = message_context(
            rule=rule, patient=patient, profile=profile, refs=related(due.refs), due=due
        )
        order = channel_order_for(rule, patient.preferred_channel)
        # Every other channel of the rule, in order: one without consent today may have it by
        # the time the first fails (the gate checks again before each try).
        later = [other for other in order if other != channel]
        try:
            texts = _texts(templates, channel, patient.preferred_language, context)
            fallbacks = {
                other: alt
                for other in later
                if (alt := _texts(templates, other, patient.preferred_language, context))
            }
        except Exception:  # a template that passed validation but fails on this data
            log.exception("rule %s: a template failed for patient %s", rule.pk, patient.pk)
            texts, reason = None, SkipReason.TEMPLATE_ERROR
        else:
            reason = SkipReason.NO_TEMPLATE
        if texts is None:
            result.skipped[reason] += 1
            skips.append(_skip(rule, due, reason, now))
            continue
        messages.append(
            OutboxMessage(
                rule=rule,
                patient=patient,
                occurrence_key=due.occurrence_key,
                purpose=rule.purpose,
                channel=channel,
                channels_left=later,
                priority=rule.priority,
                due_at=send_at,
                next_attempt_at=send_at,
                expires_at=due.expires_at,
                subject=texts[0],
                body=texts[1],
                fallbacks=json.dumps(fallbacks, ensure_ascii=False) if fallbacks else "",
                anchor_at=due.anchor_at,
                **due.refs,
            )
        )
    return messages


def _skip(rule, due, reason, now) -> Skip:
    return Skip(
        rule=rule,
        patient_id=due.row["pid"],
        occurrence_key=due.occurrence_key,
        reason=reason,
        at=now,
    )


def _load_related(to_queue):
    """Fetch the appointments, procedures, … the queued messages talk about, one query each."""
    models = {
        "appointment_id": Appointment,
        "procedure_id": Procedure,
        "prescription_id": Prescription,
        "refill_window_id": RefillWindow,
    }
    loaded = {
        key: model.objects.in_bulk({due.refs[key] for due, _c, _s in to_queue if key in due.refs})
        for key, model in models.items()
    }

    def related(refs: dict) -> dict:
        return {key.removesuffix("_id"): loaded[key][value] for key, value in refs.items()}

    return related


def _plan_call_tasks(rule: Rule, today: date) -> None:
    """The SOP wants a human call on day 1–3 after discharge, whatever the patient consented to."""
    procedures = Procedure.objects.filter(
        days_in([today - timedelta(days=d) for d in (1, 2, 3)], "discharged_at"),
        patient__erased_at__isnull=True,
    )
    if rule.care_plan_key:
        procedures = procedures.filter(care_plan_key=rule.care_plan_key)
    tasks = []
    for procedure_id, patient_id, discharged in procedures.values_list(
        "id", "patient_id", "discharged_at"
    ):
        day = timezone.localtime(discharged).date()
        tasks.append(
            StaffTask(
                kind=StaffTask.Kind.POSTOP_CALL,
                patient_id=patient_id,
                procedure_id=procedure_id,
                due_on=day + timedelta(days=1),
                until=day + timedelta(days=3),
            )
        )
    StaffTask.objects.bulk_create(tasks, ignore_conflicts=True)


def plan_due_messages(
    *, now: datetime | None = None, dry_run: bool = False
) -> dict[Rule, PlanResult]:
    """Plan every enabled rule at `now`; a rule that fails is logged and the others still run."""
    now = now or timezone.now()
    profile = ClinicProfile.load()
    results = {}
    for rule in Rule.objects.filter(enabled=True).prefetch_related("conditions"):
        try:
            results[rule] = plan_rule(rule, now=now, profile=profile, dry_run=dry_run)
        except Exception:
            log.exception("planning rule %s failed", rule.pk)
    return results
