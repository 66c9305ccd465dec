"""Deciding what is due: every enabled rule, one set-based query each, into the outbox.

For each rule its kind (campaigns.kinds) gives the *due set*: one row per (patient, occurrence)
whose anchor (birthday, discharge, dose, refill window, appointment, last visit) plus an offset
falls today, annotated in the same query with everything the send policy needs (consent per
channel, contact points, audience facts, recent relationship messages). On PostgreSQL the
whole rule is then one statement (campaigns.plan_sql): occurrences, decision, send time and
writes in SQL. Elsewhere, and for dry runs, Python walks the due set as a stream, a batch at a
time, never the patient table and never the whole set at once, asks `plan_decision` about
each occurrence and writes in bulk. Either way rows go in without their texts (`message_text`
makes a text when the message is sent), and the unique key (rule, patient, occurrence) makes
planning idempotent, also when two workers plan at once.
"""

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from itertools import islice
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Case, DateField, Exists, F, OuterRef, QuerySet, Value, When
from django.utils import timezone

from campaigns.context import message_context
from campaigns.kinds import KINDS, Due, Selection, days_in
from campaigns.links import LINKS_KEY, LinkTokens, site_url, uses_links
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.plan_sql import STATES, plan_rule_sql
from campaigns.policy import channel_order_for, plan_decision, policy_annotations
from campaigns.sendwindow import day_bounds
from campaigns.templating import (
    RenderedText,
    RenderFailure,
    TemplateRenderError,
    render_message,
)
from clinic_crm.copy_insert import insert_new, insert_select
from consent.selectors import patient_prefix
from patients.models import ClinicProfile, Patient, Procedure
from reminders.models import MESSAGE_ABOUT, OutboxMessage, StaffTask, TrackedLink

log = logging.getLogger(__name__)

BATCH = 2000  # due occurrences decided, rendered and inserted together


@dataclass
class PlanResult:
    queued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class ToQueue:
    due: Due
    channel: str
    send_at: datetime


def due_set(
    rule: Rule, *, now: datetime, profile: ClinicProfile, consent_states: bool = True
) -> tuple[QuerySet[Any], Selection]:
    """The rule's due rows, annotated for the decision, as one query; and the kind's selection
    they come from, whose `expand` (or `occurrences`, in SQL) makes their occurrences. Without
    `consent_states`, the rows lack `<channel>_granted` and `<channel>_withdrawn`, which
    campaigns.plan_sql joins itself."""
    today = timezone.localdate(now)
    kind = KINDS[rule.kind]
    selection = kind.select(rule, today, now, profile)
    annotations = due_annotations(rule, patient_ref=selection.patient_ref, at=now)
    if not consent_states:
        states = tuple(f"{channel}_{state}" for channel in rule.channel_order for state in STATES)
        annotations = {name: value for name, value in annotations.items() if name not in states}
    fields = [*annotations, *kind.fields]
    return selection.rows.annotate(**annotations).values(*fields), selection


def due_annotations(rule: Rule, *, patient_ref: str, at: datetime) -> dict[str, Any]:
    """What `due_set` annotates on a kind's selection (rows reaching the patient at
    `patient_ref`): the patient's facts plan_decision reads and the policy's annotations at
    `at`. Shared with campaigns.forecast, which must decide exactly as the planner does."""
    prefix = patient_prefix(patient_ref)
    annotations: dict[str, Any] = {
        "pid": F(patient_ref),
        "birth": F(f"{prefix}birth_date"),
        "patient_sex": F(f"{prefix}sex"),
        "preferred": F(f"{prefix}preferred_channel"),
        "language": F(f"{prefix}preferred_language"),
        **policy_annotations(rule=rule, patient_ref=patient_ref, at=at),
    }
    if rule.conditions.exists():
        annotations["in_conditions"] = Exists(
            Patient.conditions.through.objects.filter(
                patient_id=OuterRef(patient_ref), condition__in=rule.conditions.all()
            )
        )
    return annotations


def _dues(rule: Rule, *, now: datetime, profile: ClinicProfile) -> Iterator[Due]:
    rows, selection = due_set(rule, now=now, profile=profile)
    for row in rows.order_by().iterator(chunk_size=BATCH):
        yield from selection.expand(row)


def plan_rule(
    rule: Rule, *, now: datetime, profile: ClinicProfile, dry_run: bool = False
) -> PlanResult:
    """Queue what `rule` has due at `now`; record why each other due patient got nothing."""
    today = timezone.localdate(now)
    templates = {(t.channel, t.language): t for t in MessageTemplate.objects.filter(rule=rule)}
    # Tracked links need the public address; without it, planning the rule fails here, loud,
    # rather than queueing messages whose texts can never be made.
    sources = [text for t in templates.values() for text in (t.subject, t.body)]
    if uses_links(*sources) and not dry_run:
        site_url()
    if connection.vendor == "postgresql" and not dry_run:
        rows, selection = due_set(rule, now=now, profile=profile, consent_states=False)
        queued, skipped = plan_rule_sql(
            rule,
            rows=rows,
            occurrences=selection.occurrences,
            has_template=lambda channel, language: (
                _template(templates, channel, language) is not None
            ),
            later=partial(_later_channels, rule, templates),
            now=now,
            profile=profile,
        )
        result = PlanResult(queued, skipped)
    else:
        result = _plan_in_python(rule, templates, now=now, profile=profile, dry_run=dry_run)
    if not dry_run and rule.kind == RuleKind.POSTOP and rule.staff_call:
        _plan_call_tasks(rule, today)
    return result


def _plan_in_python(
    rule: Rule,
    templates: dict[tuple[str, str], MessageTemplate],
    *,
    now: datetime,
    profile: ClinicProfile,
    dry_run: bool,
) -> PlanResult:
    """The due set walked in Python, a batch at a time, each occurrence decided by
    plan_decision: on SQLite, and for dry runs (which write nothing)."""
    result = PlanResult()
    dues = _dues(rule, now=now, profile=profile)
    while batch := list(islice(dues, BATCH)):
        existing = _existing_keys(rule, {due.row["pid"] for due in batch})
        to_queue: list[ToQueue] = []
        skips: list[Skip] = []
        for due in batch:
            if (due.row["pid"], due.occurrence_key) in existing:
                continue
            decision = plan_decision(rule=rule, due=due, now=now, profile=profile)
            if decision.skip is not None:
                result.skipped[decision.skip] += 1
                skips.append(_skip(rule, due, decision.skip, now))
            else:
                assert decision.send_at is not None  # noqa: S101 - queued means a time
                to_queue.append(ToQueue(due, decision.channel, decision.send_at))
        messages = outbox_rows(rule, to_queue, templates, result, skips, now)
        if not dry_run:
            # clinic_crm.copy_insert: a message another worker planned meanwhile is left as it
            # is; a skip recorded earlier takes the new reason.
            key = ["rule", "patient", "occurrence_key"]
            insert_new(OutboxMessage, messages, unique_fields=key)
            insert_new(Skip, skips, unique_fields=key, update_fields=["reason", "at"])
        result.queued += len(messages)
    return result


def _existing_keys(rule: Rule, patient_ids: set[int]) -> set[tuple[int, str]]:
    return set(
        OutboxMessage.objects.filter(rule=rule, patient_id__any=patient_ids).values_list(
            "patient_id", "occurrence_key"
        )
    )


def _template(
    templates: dict[tuple[str, str], MessageTemplate], channel: str, language: str
) -> MessageTemplate | None:
    """The rule's template for `channel` in `language`, else in zh-Hant; None when neither."""
    return templates.get((channel, language)) or templates.get((channel, "zh-hant"))


def _later_channels(
    rule: Rule,
    templates: dict[tuple[str, str], MessageTemplate],
    preferred: str,
    channel: str,
    language: str,
) -> list[str]:
    """A message's channels_left: every other channel of the rule with a template, in order
    (the patient's preferred first). One without consent today may have it by the time the
    first fails: the gate checks again before each try."""
    return [
        other
        for other in channel_order_for(rule, preferred)
        if other != channel and _template(templates, other, language) is not None
    ]


def outbox_rows(
    rule: Rule,
    to_queue: list[ToQueue],
    templates: dict[tuple[str, str], MessageTemplate],
    result: PlanResult,
    skips: list[Skip],
    now: datetime,
) -> list[OutboxMessage]:
    """Outbox rows for the due occurrences, or a skip where the rule has no template for the
    chosen channel in the patient's language (or zh-Hant).

    A row carries no text: `message_text` makes it when the message is sent, on whichever
    channel it is then on, from the template and the records as they are at that moment."""
    messages = []
    for item in to_queue:
        due, channel, row = item.due, item.channel, item.due.row
        language = row["language"]
        if _template(templates, channel, language) is None:
            result.skipped[SkipReason.NO_TEMPLATE] += 1
            skips.append(_skip(rule, due, SkipReason.NO_TEMPLATE, now))
            continue
        messages.append(
            OutboxMessage(
                rule=rule,
                patient_id=row["pid"],
                occurrence_key=due.occurrence_key,
                purpose=rule.purpose,
                channel=channel,
                channels_left=_later_channels(rule, templates, row["preferred"], channel, language),
                priority=rule.priority,
                due_at=item.send_at,
                next_attempt_at=item.send_at,
                expires_at=due.expires_at,
                anchor_at=due.anchor_at,
                **due.refs,
            )
        )
    return messages


def message_text(
    message: OutboxMessage, channel: str, *, now: datetime, profile: ClinicProfile | None = None
) -> RenderedText | None:
    """The text of queued `message` for `channel`, made when it is sent on that channel (its
    first, or one it falls through to), not at planning: from the rule's template as it is
    now, for the message's patient and occurrence, as of the day the message was due. None when
    the rule has no template for `channel` (any more). Raises TemplateRenderError (whose words
    never quote patient data), also when its tracked links can't be made; those links get
    their rows here."""
    rule, patient = message.rule, message.patient
    # rule.templates: prefetched for a dispatch batch (reminders.services.messages_claim).
    templates = {(t.channel, t.language): t for t in rule.templates.all() if t.channel == channel}
    template = _template(templates, channel, patient.preferred_language)
    if template is None:
        return None
    kind = KINDS[rule.kind]
    about = [name for name in MESSAGE_ABOUT if getattr(message, f"{name}_id") is not None]
    ids = {f"{name}_id": getattr(message, f"{name}_id") for name in about}
    due = Due(
        kind.row_of(message),
        message.occurrence_key,
        message.due_at,
        message.expires_at,
        ids,
        message.anchor_at,
    )
    context = message_context(
        rule=rule,
        patient=patient,
        profile=profile or ClinicProfile.load(),
        refs={name: getattr(message, name) for name in about},
        due=due,
        today=timezone.localdate(message.due_at),
    )
    tokens = None
    if uses_links(template.subject, template.body):
        try:
            tokens = LinkTokens(site_url())
        except ImproperlyConfigured as error:
            raise TemplateRenderError(RenderFailure.FAILED, str(error)) from None
        context[LINKS_KEY] = tokens
    text = render_message(
        subject=template.subject, body=template.body, context=context, channel=channel
    )
    if tokens is not None:
        TrackedLink.objects.bulk_create(
            TrackedLink(token=token, message=message, rule=rule, url=url, created_at=now)
            for url, token in tokens.tokens.items()
        )
    return text


def _skip(rule: Rule, due: Due, reason: str, now: datetime) -> Skip:
    return Skip(
        rule=rule,
        patient_id=due.row["pid"],
        occurrence_key=due.occurrence_key,
        reason=reason,
        at=now,
    )


def _plan_call_tasks(rule: Rule, today: date) -> None:
    """The SOP wants a human call on day 1–3 after discharge, whatever the patient consented
    to: one task per procedure (the unique key keeps it one), from the day after discharge to
    the third, in one INSERT … SELECT."""
    discharge_days = [today - timedelta(days=d) for d in (1, 2, 3)]
    procedures = Procedure.objects.filter(
        days_in(discharge_days, "discharged_at"), patient__erased_at__isnull=True
    )
    if rule.care_plan_key:
        procedures = procedures.filter(care_plan_key=rule.care_plan_key)

    def days_after(days: int) -> Case:
        whens = []
        for day in discharge_days:
            start, end = day_bounds(day)
            after = Value(day + timedelta(days=days), output_field=DateField())
            whens.append(When(discharged_at__gte=start, discharged_at__lt=end, then=after))
        return Case(*whens, output_field=DateField())

    tasks = procedures.annotate(
        kind=Value(StaffTask.Kind.POSTOP_CALL),
        procedure_id=F("id"),
        due_on=days_after(1),
        until=days_after(3),
    ).values("patient_id", "kind", "procedure_id", "due_on", "until")
    insert_select(StaffTask, tasks)


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
