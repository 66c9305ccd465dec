"""Deciding what is due: every enabled rule, one set-based query each, into the outbox.

For each rule its kind (campaigns.kinds) gives the *due set*: one row per (patient, occurrence)
whose anchor (birthday, discharge, dose, refill window, appointment, last visit) plus an offset
falls today, annotated in the same query with everything the send policy needs (consent per
channel, contact points, audience facts, recent relationship messages). Python walks the due
set as a stream, a batch at a time, never the patient table and never the whole set at once.
Rows go in with bulk inserts; the unique key (rule, patient, occurrence) makes planning
idempotent, also when two workers plan at once.
"""

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import islice
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone

from campaigns.context import message_context
from campaigns.costs import channel_size
from campaigns.kinds import KINDS, Due, Refs, days_in
from campaigns.links import LINKS_KEY, LinkTokens, site_url, uses_links
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.policy import channel_order_for, plan_decision, policy_annotations
from campaigns.templating import (
    RenderedText,
    RenderFailure,
    TemplateRenderError,
    render_message,
)
from clinic_crm.copy_insert import insert_new
from consent.selectors import patient_prefix
from patients.models import (
    Appointment,
    ClinicProfile,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
)
from reminders.models import OutboxMessage, StaffTask, TrackedLink

log = logging.getLogger(__name__)

BATCH = 2000  # due occurrences decided, rendered and inserted together
RELATED = {
    "appointment_id": Appointment,
    "procedure_id": Procedure,
    "prescription_id": Prescription,
    "refill_window_id": RefillWindow,
}


# What making a message reads of its patient (campaigns.context.message_context, the channel
# order, the SMS country); `uuid` binds the encrypted name and phone to the row.
MESSAGE_PATIENT_FIELDS = (
    "uuid",
    "name",
    "sex",
    "birth_date",
    "phone",
    "preferred_language",
    "preferred_channel",
)


@dataclass
class PlanResult:
    queued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Link:
    """A tracked link made while rendering `message`, saved once the message has its id."""

    message: OutboxMessage
    token: str
    url: str


@dataclass(frozen=True)
class ToQueue:
    due: Due
    channel: str
    send_at: datetime


def due_set(rule: Rule, *, now: datetime, profile: ClinicProfile) -> tuple[QuerySet[Any], Any]:
    """The rule's due rows, annotated for the decision, as one query; and their expander."""
    today = timezone.localdate(now)
    kind = KINDS[rule.kind]
    selection = kind.select(rule, today, now, profile)
    annotations = due_annotations(rule, patient_ref=selection.patient_ref, at=now)
    fields = [*annotations, *kind.fields]
    return selection.rows.annotate(**annotations).values(*fields), selection.expand


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
    rows, expand = due_set(rule, now=now, profile=profile)
    for row in rows.order_by().iterator(chunk_size=BATCH):
        yield from expand(row)


def plan_rule(
    rule: Rule, *, now: datetime, profile: ClinicProfile, dry_run: bool = False
) -> PlanResult:
    """Queue what `rule` has due at `now`; record why each other due patient got nothing."""
    today = timezone.localdate(now)
    templates = {(t.channel, t.language): t for t in MessageTemplate.objects.filter(rule=rule)}
    # Tracked links need the public address; without it, planning the rule fails here, loud,
    # rather than texting patients a link that leads nowhere. A dry run shows stand-ins.
    sources = [text for t in templates.values() for text in (t.subject, t.body)]
    base = site_url() if uses_links(*sources) and not dry_run else ""
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
        links: list[Link] = []
        messages = _render_all(
            rule,
            to_queue,
            templates,
            profile,
            result,
            skips,
            today,
            now,
            links=links,
            link_base=base,
        )
        if not dry_run:
            # A message whose link has no row yet would send the patient to a 404.
            # COPY on PostgreSQL (clinic_crm.copy_insert): a message another worker planned
            # meanwhile is left as it is; a skip recorded earlier takes the new reason.
            key = ["rule", "patient", "occurrence_key"]
            with transaction.atomic():
                insert_new(OutboxMessage, messages, unique_fields=key)
                if links:
                    _save_links(rule, links, now)
            insert_new(Skip, skips, unique_fields=key, update_fields=["reason", "at"])
        result.queued += len(messages)
    if not dry_run and rule.kind == RuleKind.POSTOP and rule.staff_call:
        _plan_call_tasks(rule, today)
    return result


def _save_links(rule: Rule, links: list[Link], now: datetime) -> None:
    """The TrackedLink rows of the messages just inserted, in bulk. A message dropped by the
    unique key (planned at once by another worker) has its own links there; its are dropped."""
    ids = dict(
        OutboxMessage.objects.filter(uuid__in={link.message.uuid for link in links}).values_list(
            "uuid", "id"
        )
    )
    TrackedLink.objects.bulk_create(
        [
            TrackedLink(
                token=link.token,
                message_id=ids[link.message.uuid],
                rule=rule,
                url=link.url,
                created_at=now,
            )
            for link in links
            if link.message.uuid in ids
        ],
        batch_size=1000,
    )


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


def _texts(
    templates: dict[tuple[str, str], MessageTemplate],
    channel: str,
    language: str,
    context: dict[str, Any],
) -> list[str] | None:
    """[subject, body] of the rule's template for `channel` in `language` (else zh-Hant), or
    None when there is none. Raises TemplateRenderError (which never quotes patient data)."""
    template = _template(templates, channel, language)
    if template is None:
        return None
    rendered = render_message(
        subject=template.subject, body=template.body, context=context, channel=channel
    )
    return [rendered.subject, rendered.body]


def fallback_text(message: OutboxMessage, channel: str, *, now: datetime) -> RenderedText | None:
    """The text of queued `message` for `channel`, made when it falls through to that channel
    (not at planning, for every channel it might never need): from the rule's template as it is
    now, for the message's patient and occurrence, as of the day the message was due. None when
    the rule has no template for `channel` (any more). Raises TemplateRenderError as rendering
    does, also when its tracked links can't be made; those links get their rows here."""
    rule, patient = message.rule, message.patient
    templates = {
        (t.channel, t.language): t
        for t in MessageTemplate.objects.filter(rule=rule, channel=channel)
    }
    template = _template(templates, channel, patient.preferred_language)
    if template is None:
        return None
    kind = KINDS[rule.kind]
    ids = {key: getattr(message, key) for key in RELATED if getattr(message, key) is not None}
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
        profile=ClinicProfile.load(),
        refs={key.removesuffix("_id"): getattr(message, key.removesuffix("_id")) for key in ids},
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


def _render_all(
    rule: Rule,
    to_queue: list[ToQueue],
    templates: dict[tuple[str, str], MessageTemplate],
    profile: ClinicProfile,
    result: PlanResult,
    skips: list[Skip],
    today: date,
    now: datetime,
    *,
    links: list[Link] | None = None,
    link_base: str = "",
) -> list[OutboxMessage]:
    """Outbox rows for the due patients, with the texts of the chosen and later channels.

    With `link_base` (the checked PUBLIC_BASE_URL), each message's tracked links get their tokens
    and are appended to `links`; without it they render as stand-ins of the same length."""
    patients = _by_pk(
        Patient.objects.only(*MESSAGE_PATIENT_FIELDS), {item.due.row["pid"] for item in to_queue}
    )
    related = _load_related(to_queue)
    messages = []
    for item in to_queue:
        due, channel = item.due, item.channel
        patient = patients[due.row["pid"]]
        language = patient.preferred_language
        context = message_context(
            rule=rule,
            patient=patient,
            profile=profile,
            refs=related(due.refs),
            due=due,
            today=today,
        )
        tokens = LinkTokens(link_base) if link_base else None
        if tokens is not None:
            context[LINKS_KEY] = tokens
        try:
            texts = _texts(templates, channel, language, context)
        except TemplateRenderError as error:
            _log_render_error(rule, patient, channel, error)
            texts, reason = None, _RENDER_SKIP[error.failure]
        else:
            reason = SkipReason.NO_TEMPLATE
        if texts is None:
            result.skipped[reason] += 1
            skips.append(_skip(rule, due, reason, now))
            continue
        # Every other channel of the rule with a template, in order: one without consent today
        # may have it by the time the first fails (the gate checks again before each try). Its
        # text is made if and when the message falls through to it (fallback_text).
        later = [
            other
            for other in channel_order_for(rule, patient.preferred_channel)
            if other != channel and _template(templates, other, language) is not None
        ]
        message = OutboxMessage(
            rule=rule,
            patient=patient,
            occurrence_key=due.occurrence_key,
            purpose=rule.purpose,
            channel=channel,
            channels_left=later,
            priority=rule.priority,
            due_at=item.send_at,
            next_attempt_at=item.send_at,
            expires_at=due.expires_at,
            subject=texts[0],
            body=texts[1],
            **channel_size(channel, texts[1], patient.phone),
            anchor_at=due.anchor_at,
            **due.refs,
        )
        messages.append(message)
        if tokens is not None and links is not None:
            links.extend(Link(message, token, url) for url, token in tokens.tokens.items())
    return messages


_RENDER_SKIP = {
    RenderFailure.TOO_LONG: SkipReason.TOO_LONG,
    RenderFailure.EMPTY: SkipReason.TEMPLATE_ERROR,
    RenderFailure.FAILED: SkipReason.TEMPLATE_ERROR,
}


def _log_render_error(
    rule: Rule, patient: Patient, channel: str, error: TemplateRenderError
) -> None:
    # The error's own words never quote patient data; the log names ids only.
    log.warning(
        "rule %s: the %s text for patient %s: %s", rule.pk, channel, patient.pk, error.failure
    )


def _skip(rule: Rule, due: Due, reason: str, now: datetime) -> Skip:
    return Skip(
        rule=rule,
        patient_id=due.row["pid"],
        occurrence_key=due.occurrence_key,
        reason=reason,
        at=now,
    )


def _by_pk(rows: QuerySet[Any], ids: set[int]) -> dict[int, Any]:
    """in_bulk with the ids as one array parameter (clinic_crm.lookups): a batch's IN list of
    thousands of literals cost more to build and parse than the rows did to read."""
    return {row.pk: row for row in rows.filter(pk__any=ids)} if ids else {}


def _load_related(to_queue: list[ToQueue]) -> Any:
    """Fetch the appointments, procedures, … the queued messages talk about, one query each."""
    loaded = {
        key: _by_pk(
            model._default_manager.all(), {i.due.refs[key] for i in to_queue if key in i.due.refs}
        )
        for key, model in RELATED.items()
    }

    def related(refs: dict[str, int]) -> Refs:
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
