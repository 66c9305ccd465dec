"""The demo's past: what the shipped care rules did over the last HISTORY_DAYS days, so the
manager's dashboard and the front desk show real-looking figures straight after seeding.

Each patient's past is a small event simulation in time order: a rule's planning run on a day
(message or skip, through the same send window, channel order and holdout as the real planner),
then the outcome that message makes likelier (a confirmation reply, a visit kept, a refill
picked up, a recalled patient booking). Outcomes depend on the reminders, so their effect shows:
an unconfirmed visit without a reminder is missed about one time in five, a confirmed one three
times in a hundred; a refill window with its reminders is picked up about nine times in ten,
without them two times in three. Opt-outs (an SMS "STOP", a LINE block) become consent ledger
entries written by consent_bulk_record with the rest of the patient's consent, so the ledger and
the current state agree; a later message sees the withdrawal.

Everything is drawn from one random generator per patient, seeded by the demo seed, today and the
chart number: the same seed on the same day writes the same rows. No queries per patient: the
caller saves what `PatientHistory` collected in bulk, chunk by chunk.

This module lives under management/ because it writes across apps (campaigns, reminders);
patients' own code imports neither.
"""

import base64
import heapq
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Exists, OuterRef
from django.utils import timezone, translation

from campaigns.context import message_context
from campaigns.costs import channel_size
from campaigns.kinds import DOSE_LOOKAHEAD, Due, send_day_before
from campaigns.links import LINKS_KEY, LinkTokens, site_url, uses_links
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip, SkipReason
from campaigns.policy import channel_order_for, is_held_out
from campaigns.sendwindow import at_local, day_bounds, fit
from campaigns.templating import TemplateRenderError, render_message
from consent.models import Action, Channel, ConsentEntry, Purpose, Source
from patients.models import Appointment, ClinicProfile, Patient, Visit, age_on
from reminders.models import Attempt, OutboxMessage, TrackedLink
from reminders.models import Status as MessageStatus

HISTORY_DAYS = 120
# Most shipped rules were switched on this long ago; LATE_KIND only LATE_DAYS ago, so the
# dashboard can compare the weeks before a switch-on with those after it.
RULES_ON_DAYS = 100
LATE_KIND = RuleKind.REFILL_CLOSES
LATE_DAYS = 40
# The return-visit confirmation request keeps this share of patients out, as its comparison.
HOLDOUT_PERCENT = 20
# Reminders of visits and refills planned ahead: queued for the next few days.
QUEUED_DAYS = 3
QUEUED_KINDS = {RuleKind.APPOINTMENT, RuleKind.REFILL_OPENS}
LIVE = (Appointment.Status.BOOKED, Appointment.Status.CONFIRMED)
REACHED = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.UNKNOWN)

# What happened to a message once it was due, per channel, with weights. SMS delivery reports
# come back from the provider; LINE and e-mail have none, so they end as "sent".
OUTCOMES: dict[str, dict[str, int]] = {
    Channel.SMS: {
        MessageStatus.DELIVERED: 84,
        MessageStatus.SENT: 4,
        MessageStatus.FAILED: 5,
        MessageStatus.UNKNOWN: 2,
        MessageStatus.DROPPED: 5,
    },
    Channel.LINE: {
        MessageStatus.SENT: 90,
        MessageStatus.FAILED: 3,
        MessageStatus.UNKNOWN: 2,
        MessageStatus.DROPPED: 5,
    },
    Channel.EMAIL: {MessageStatus.SENT: 93, MessageStatus.FAILED: 3, MessageStatus.DROPPED: 4},
}
# (error, refused when handed over) per channel; the others were accepted, then undelivered.
FAILURES: dict[str, list[tuple[str, bool]]] = {
    Channel.SMS: [
        ("空號或號碼錯誤（Twilio 21211）", True),
        ("電信業者拒收（Twilio 30007）", False),
        ("無法送達，手機可能關機或不在服務區（Twilio 30003）", False),
    ],
    Channel.LINE: [("對方已封鎖 LINE 官方帳號", True)],
    Channel.EMAIL: [("收件地址不存在（550）", True)],
}
UNKNOWN_ERROR = "連線逾時：供應商可能已收到"
TRANSIENT_ERROR = "供應商暫時無法處理（HTTP 503）"

# Outcomes. A visit is missed with these chances: confirmed; asked to confirm (the message
# arrived) but not confirmed; only the notice arrived; nothing arrived.
NO_SHOW_CONFIRMED = 0.03
NO_SHOW_ASKED = 0.13
NO_SHOW_NOTICED = 0.195
NO_SHOW_UNREMINDED = 0.22
# With PUBLIC_BASE_URL set (development's default is the local server), the birthday greeting
# links to the clinic's health talks (a made-up page on a reserved domain), and some patients
# open it.
LINK_KIND = RuleKind.BIRTHDAY
LINK_URL = "https://anxin-clinic.example/health-talks"
LINK_LINES = {
    "zh-hant": f'\n本月健康講座：{{% link "{LINK_URL}" %}}',
    "en": f'\nThis month\'s health talks: {{% link "{LINK_URL}" %}}',
}
CLICKED = 0.15  # of the greetings that arrived
CONFIRM_REPLY = 0.55  # of the confirmation requests that arrived
PHONE_CONFIRM = 0.10  # the front desk's calls the day before, to those still unconfirmed
# A word back ("恢復良好") to a post-op check-in; 3 % answer anything else.
REPLY_OTHER: dict[str, float] = {RuleKind.POSTOP: 0.25}
# A refill window: picked up before the closing reminder's day (with / without the opening
# reminder), then in its last days (with / without the closing reminder).
PICKUP_EARLY = (0.80, 0.58)
PICKUP_LATE = (0.60, 0.15)
RECALL_BOOKS = (0.35, 0.12)  # books within two weeks, with / without the recall message
# An SMS answered "STOP"; a LINE message that made the patient block the account.
OPT_OUT: dict[str, float] = {Channel.SMS: 0.004, Channel.LINE: 0.003}


def rule_history_setup(*, now: datetime) -> None:
    """Back-date the switch-on time of each enabled rule that has sent nothing yet (the
    shipped rules of a fresh database), and give the return-visit confirmation request its
    holdout. A rule with messages keeps what the clinic set."""
    today = timezone.localdate(now)
    fresh = Rule.objects.filter(enabled=True).exclude(
        Exists(OutboxMessage.objects.filter(rule_id=OuterRef("pk")))
    )
    for rule in fresh:
        days = LATE_DAYS if rule.kind == LATE_KIND else RULES_ON_DAYS
        # The evening before its first planning day: that day's runs all see it on.
        rule.enabled_since = at_local(today - timedelta(days=days + 1), time(17, 30))
        if rule.kind == RuleKind.APPOINTMENT and rule.asks_confirmation:
            rule.holdout_percent = HOLDOUT_PERCENT
        rule.save(update_fields=["enabled_since", "holdout_percent"])
        if rule.kind == LINK_KIND and link_base():
            for template in rule.templates.all():
                if not uses_links(template.body) and template.language in LINK_LINES:
                    template.body += LINK_LINES[template.language]
                    template.save(update_fields=["body"])


def link_base() -> str:
    """PUBLIC_BASE_URL, where tracked links lead, or "" when it is not set: then no template gets a
    link, since the planner refuses to plan one without it."""
    try:
        return site_url()
    except ImproperlyConfigured:
        return ""


class SeededTokens(LinkTokens):
    """Link tokens from the patient's seeded generator instead of `secrets`: same seed, same
    rows. Demo data only; a real message's token must be unguessable."""

    def __init__(self, base: str, rng: random.Random) -> None:
        super().__init__(base)
        self.rng = rng

    def url_for(self, url: str) -> str:
        if url not in self.tokens:
            raw = self.rng.getrandbits(128).to_bytes(16, "big")
            self.tokens[url] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return super().url_for(url)


@dataclass
class HistoryContext:
    """What every patient's history reads, loaded once per run."""

    seed: int
    now: datetime
    profile: ClinicProfile
    rules: list[Rule]
    templates: dict[tuple[int, str, str], tuple[str, str]]
    # Makes a new appointment for `demo` on `day` (the seed command's own departments, doctors
    # and clinic sessions).
    new_appointment: Callable[[Any, date, random.Random], Appointment]
    link_base: str = ""
    today: date = field(init=False)
    start: date = field(init=False)
    stale_error: str = field(init=False)
    withdrawn_error: str = field(init=False)

    def __post_init__(self) -> None:
        self.today = timezone.localdate(self.now)
        self.start = self.today - timedelta(days=HISTORY_DAYS)
        with translation.override(settings.LANGUAGE_CODE):
            self.stale_error = str(SkipReason.STALE.label)
            self.withdrawn_error = str(SkipReason.WITHDRAWN.label)

    @classmethod
    def load(
        cls,
        *,
        seed: int,
        now: datetime,
        new_appointment: Callable[[Any, date, random.Random], Appointment],
    ) -> "HistoryContext":
        rules = list(Rule.objects.filter(enabled=True).order_by("priority", "pk"))
        templates = {
            (t.rule_id, t.channel, t.language): (t.subject, t.body)
            for t in MessageTemplate.objects.filter(rule__in=rules)
        }
        return cls(
            seed=seed,
            now=now,
            profile=ClinicProfile.load(),
            rules=rules,
            templates=templates,
            new_appointment=new_appointment,
            link_base=link_base(),
        )

    def of_kind(self, kind: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.kind == kind]


@dataclass
class Collected:
    """A chunk's history, unsaved: messages and skips get their occurrence keys once the rows
    they name have ids (`finish_keys`)."""

    messages: list[OutboxMessage] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    links: list[TrackedLink] = field(default_factory=list)
    keys: list[tuple[OutboxMessage | Skip, Callable[[], str]]] = field(default_factory=list)

    def finish_keys(self) -> None:
        for row, key in self.keys:
            row.occurrence_key = key()
        self.keys.clear()


@contextmanager
def created_at_as_given() -> Iterator[None]:
    """Let bulk_create keep the created_at we set: a message planned 90 days ago was created
    then, and the patient page lists messages by it. auto_now_add would stamp today."""
    created = OutboxMessage._meta.get_field("created_at")
    created.auto_now_add = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        created.auto_now_add = True  # type: ignore[attr-defined]


@dataclass(order=True)
class _Event:
    at: datetime
    order: int
    run: Callable[[], None] = field(compare=False)


class PatientHistory:
    """One patient's past, simulated event by event in time order."""

    def __init__(self, ctx: HistoryContext, demo: Any, out: Collected) -> None:
        self.ctx, self.demo, self.out = ctx, demo, out
        self.patient: Patient = demo.patient
        # Demo data, not secrets: a seeded generator, so the same seed gives the same past.
        seed = f"history:{ctx.seed}:{ctx.today.isoformat()}:{demo.patient.chart_no}"
        self.rng = random.Random(seed)  # noqa: S311
        self.events: list[_Event] = []
        self.counter = 0
        self.addresses: dict[str, str] = {
            Channel.SMS: self.patient.phone,
            Channel.LINE: self.patient.line_user_id,
            Channel.EMAIL: self.patient.email,
        }
        # (purpose, channel) -> [(recorded_at, granted)], oldest first.
        self.consent: dict[tuple[str, str], list[tuple[datetime, bool]]] = {}
        for entry in demo.consent_entries:
            self._consent_add(entry.purpose, entry.channel, entry.recorded_at, entry.action)
        self.last_sent: datetime | None = None
        # Per appointment (by object id): which reminders reached the patient.
        self.noticed: set[int] = set()
        self.asked: set[int] = set()

    # --- the simulation ------------------------------------------------------------------------

    def run(self) -> None:
        demo, ctx = self.demo, self.ctx
        for appointment in list(demo.appointments):
            self._appointment(appointment, booked_at=None)
        for window in demo.refill_windows:
            self._refill(window, window.prescription)
        self._birthdays()
        for procedure in demo.procedures:
            self._postop(procedure)
        for prescription in demo.prescriptions:
            self._doses(prescription)
        self._recall()
        while self.events:
            event = heapq.heappop(self.events)
            if event.at < ctx.now:
                event.run()

    def _at(self, moment: datetime, run: Callable[[], None]) -> None:
        self.counter += 1
        heapq.heappush(self.events, _Event(moment, self.counter, run))

    def _planning(self, day: date) -> datetime:
        """When the planner (every five minutes) made `day`'s messages: just after midnight;
        those of the next days, queued ahead, early today."""
        jitter = timedelta(seconds=self.rng.randrange(300))
        if day > self.ctx.today:
            early_today = at_local(self.ctx.today, time.min) + jitter
            return min(early_today, self.ctx.now - timedelta(seconds=1))
        return at_local(day, time.min) + jitter

    # --- appointments ----------------------------------------------------------------------------

    def _appointment(self, appointment: Appointment, *, booked_at: datetime | None) -> None:
        ctx, rng = self.ctx, self.rng
        starts = appointment.starts_at
        visit_day = timezone.localtime(starts).date()
        cancelled_at = None
        if appointment.status == Appointment.Status.CANCELLED:
            cancelled_at = at_local(
                visit_day - timedelta(days=rng.randint(1, 5)), time(rng.randint(9, 17))
            )
            cancelled_at = min(cancelled_at, ctx.now - timedelta(hours=rng.randint(1, 48)))
        elif appointment.status == Appointment.Status.CONFIRMED and starts > ctx.now:
            # Confirmed at the desk when booking, or on a call since.
            appointment.confirmed_via = rng.choice(
                [Appointment.ConfirmedVia.DESK, Appointment.ConfirmedVia.PHONE]
            )
            appointment.confirmed_at = ctx.now - timedelta(minutes=rng.randint(60, 4000))

        def live(at: datetime) -> bool:
            return cancelled_at is None or at < cancelled_at

        for rule in ctx.of_kind(RuleKind.APPOINTMENT):
            if rule.departments and appointment.department not in rule.departments:
                continue
            for offset in rule.offsets:
                if offset < 0:
                    day = send_day_before(visit_day, -offset, ctx.profile)
                    expires = min(starts, day_bounds(visit_day)[0])
                else:
                    day, expires = visit_day + timedelta(days=offset), day_bounds(visit_day)[1]
                planned = self._planning(day)
                if booked_at is not None and planned < booked_at:
                    continue  # booked too late for this one
                if not self._in_history(day, rule):
                    continue

                def send(rule=rule, day=day, expires=expires, planned=planned) -> None:
                    if not live(planned):
                        return
                    if rule.asks_confirmation and _confirmed_by(appointment, planned):
                        self._skip(rule, planned, SkipReason.ALREADY_CONFIRMED, appointment)
                        return
                    status = self._message(
                        rule,
                        planned=planned,
                        due=at_local(day, rule.send_time),
                        expires=expires,
                        refs={"appointment": appointment},
                        anchor=starts,
                        key_of=appointment,
                    )
                    if status in REACHED:
                        (self.asked if rule.asks_confirmation else self.noticed).add(
                            id(appointment)
                        )

                self._at(planned, send)
        if cancelled_at is None and visit_day < ctx.today:
            self._at(starts, lambda: self._visit_outcome(appointment))

    def _visit_outcome(self, appointment: Appointment) -> None:
        rng = self.rng
        starts = appointment.starts_at
        if not _confirmed_by(appointment, starts) and rng.random() < PHONE_CONFIRM:
            day_before = timezone.localtime(starts).date() - timedelta(days=1)
            called = at_local(day_before, time(15)) + timedelta(minutes=rng.randrange(150))
            appointment.confirmed_via = Appointment.ConfirmedVia.PHONE
            appointment.confirmed_at = called
        if _confirmed_by(appointment, starts):
            chance = NO_SHOW_CONFIRMED
        elif id(appointment) in self.asked:
            chance = NO_SHOW_ASKED
        elif id(appointment) in self.noticed:
            chance = NO_SHOW_NOTICED
        else:
            chance = NO_SHOW_UNREMINDED
        missed = rng.random() < chance
        appointment.status = Appointment.Status.NO_SHOW if missed else Appointment.Status.ATTENDED

    # --- refills ---------------------------------------------------------------------------------

    def _refill(self, window: Any, prescription: Any) -> None:
        ctx, rng = self.ctx, self.rng
        opens, closes = window.opens_on, window.closes_on
        closing_day = closes - timedelta(days=2)
        past = closes < ctx.today
        if past:
            window.picked_up_on = None  # decided below, from what reached the patient
        reached: dict[str, bool] = {}

        def remind(rule: Rule, offset: int) -> None:
            anchor_field = "opens_on" if rule.kind == RuleKind.REFILL_OPENS else "closes_on"
            day = getattr(window, anchor_field) + timedelta(days=offset)
            if not prescription.refill_reminders or not self._in_history(day, rule):
                return

            planned = self._planning(day)

            def send() -> None:
                picked = window.picked_up_on
                if picked is not None and picked < day:
                    return  # picked up already: not due
                status = self._message(
                    rule,
                    planned=planned,
                    due=at_local(day, rule.send_time),
                    expires=day_bounds(closes)[1],
                    refs={"refill_window": window, "prescription": prescription},
                    anchor=at_local(opens, time.min),
                    key_of=window,
                    key_prefix="refill",
                    key_suffix=f":{anchor_field}{offset:+d}",
                )
                reached[rule.kind] = reached.get(rule.kind, False) or status in REACHED

            self._at(planned, send)

        for rule in ctx.of_kind(RuleKind.REFILL_OPENS) + ctx.of_kind(RuleKind.REFILL_CLOSES):
            for offset in rule.offsets:
                remind(rule, offset)
        if not past:
            return

        def early() -> None:
            chance = PICKUP_EARLY[0 if reached.get(RuleKind.REFILL_OPENS) else 1]
            span = (closing_day - opens).days
            if span > 0 and rng.random() < chance:
                window.picked_up_on = opens + timedelta(days=rng.randrange(span))

        def late() -> None:
            if window.picked_up_on is not None:
                return
            chance = PICKUP_LATE[0 if reached.get(RuleKind.REFILL_CLOSES) else 1]
            if rng.random() < chance:
                window.picked_up_on = closing_day + timedelta(days=rng.randrange(3))

        # Before the closing reminder's planning run, and after the window's last day.
        self._at(at_local(closing_day, time.min) - timedelta(minutes=1), early)
        self._at(at_local(closes, time(22)), late)

    # --- birthdays, post-op, doses, recall ------------------------------------------------------

    def _birthdays(self) -> None:
        born = self.patient.birth_date
        if born is None:
            return
        for rule in self.ctx.of_kind(RuleKind.BIRTHDAY):
            for year in (self.ctx.today.year - 1, self.ctx.today.year):
                birthday = _birthday_in(born, year)
                for offset in rule.offsets:
                    day = birthday + timedelta(days=offset)
                    if self._in_history(day, rule):
                        self._day_message(rule, day, key=f"birthday:{birthday.isoformat()}")

    def _postop(self, procedure: Any) -> None:
        discharged = procedure.discharged_at
        if discharged is None:
            return
        discharge_day = timezone.localtime(discharged).date()
        for rule in self.ctx.of_kind(RuleKind.POSTOP):
            if rule.care_plan_key and rule.care_plan_key != procedure.care_plan_key:
                continue
            for offset in rule.offsets:
                day = discharge_day + timedelta(days=offset)
                if not self._in_history(day, rule):
                    continue
                due = discharged if offset == 0 else at_local(day, rule.send_time)
                self._day_message(
                    rule,
                    day,
                    due=due,
                    refs={"procedure": procedure},
                    key_of=procedure,
                    key_prefix="procedure",
                    key_suffix=f":day{offset}",
                )

    def _doses(self, prescription: Any) -> None:
        if not prescription.dose_reminders or prescription.frequency == "PRN":
            return
        ctx = self.ctx
        first = max(prescription.start_date, ctx.start)
        last = min(
            prescription.start_date + timedelta(days=prescription.days_supplied - 1),
            ctx.today - timedelta(days=1),
        )
        for rule in ctx.of_kind(RuleKind.DOSE):
            day = first
            while day <= last:
                for clock in prescription.dose_times or []:
                    dose_at = at_local(day, time.fromisoformat(clock))
                    for minutes in rule.offsets:
                        due = dose_at - timedelta(minutes=minutes)
                        # Planned as it came within the planner's look-ahead.
                        jitter = timedelta(seconds=self.rng.randrange(300))
                        planned = due - DOSE_LOOKAHEAD + jitter
                        if rule.enabled_since is None or planned < rule.enabled_since:
                            continue
                        suffix = f":{day.isoformat()}T{clock}:{minutes}"

                        def send(rule=rule, planned=planned, due=due, dose_at=dose_at, s=suffix):
                            self._message(
                                rule,
                                planned=planned,
                                due=due,
                                expires=dose_at,
                                refs={"prescription": prescription},
                                anchor=dose_at,
                                key_of=prescription,
                                key_prefix="dose",
                                key_suffix=s,
                            )

                        self._at(planned, send)
                day += timedelta(days=1)

    def _recall(self) -> None:
        demo, ctx, rng = self.demo, self.ctx, self.rng
        if not demo.condition_codes or not demo.visits:
            return
        last = max(demo.visits, key=lambda v: v.visited_on)
        for rule in ctx.of_kind(RuleKind.RECALL):
            day = last.visited_on + timedelta(days=max(rule.offsets))
            if not ctx.start <= day < ctx.today:
                continue
            planned = self._planning(day)
            if any(
                a.starts_at >= planned and a.status != Appointment.Status.CANCELLED
                for a in demo.appointments
            ):
                continue  # already booked: not due
            row = {"last_visit": last.visited_on, "visit_department": last.department}

            def recall(rule=rule, day=day, planned=planned, row=row) -> None:
                status = None
                if self._rule_on(rule, planned):
                    status = self._message(
                        rule,
                        planned=planned,
                        due=at_local(day, rule.send_time),
                        expires=day_bounds(day)[1],
                        row=row,
                        key=f"recall:{row['last_visit'].isoformat()}",
                    )
                if rng.random() >= RECALL_BOOKS[0 if status in REACHED else 1]:
                    return
                booked_on = day + timedelta(days=rng.randint(1, 14))
                if booked_on >= ctx.today:
                    return  # not yet
                visit_day = booked_on + timedelta(days=rng.randint(2, 14))
                # Today and tomorrow belong to the day view's own demo.
                visit_day = max(visit_day, ctx.today + timedelta(days=2))
                appointment = ctx.new_appointment(demo, visit_day, rng)
                demo.appointments.append(appointment)
                booked_at = at_local(booked_on, time(9)) + timedelta(minutes=rng.randrange(480))
                self._appointment(appointment, booked_at=booked_at)
                if visit_day < ctx.today:
                    self._at(
                        appointment.starts_at + timedelta(minutes=1),
                        lambda: self._recall_visit(appointment),
                    )

            self._at(planned, recall)

    def _recall_visit(self, appointment: Appointment) -> None:
        if appointment.status == Appointment.Status.ATTENDED:
            self.demo.visits.append(
                Visit(
                    patient=self.patient,
                    visited_on=timezone.localtime(appointment.starts_at).date(),
                    department=appointment.department,
                    doctor=appointment.doctor,
                )
            )

    # --- one planning decision and its message ---------------------------------------------------

    def _rule_on(self, rule: Rule, planned: datetime) -> bool:
        return rule.enabled_since is not None and planned >= rule.enabled_since

    def _in_history(self, day: date, rule: Rule) -> bool:
        """Whether `day`'s planning run for `rule` lies in the simulated past, or is one of the
        next days whose visit and refill reminders are already queued."""
        if self.ctx.start <= day < self.ctx.today:
            return True
        ahead = (day - self.ctx.today).days
        return rule.kind in QUEUED_KINDS and 0 < ahead <= QUEUED_DAYS

    def _day_message(
        self,
        rule: Rule,
        day: date,
        *,
        due: datetime | None = None,
        refs: dict[str, Any] | None = None,
        key: str = "",
        key_of: Any = None,
        key_prefix: str = "",
        key_suffix: str = "",
    ) -> None:
        planned = self._planning(day)

        def send() -> None:
            self._message(
                rule,
                planned=planned,
                due=due or at_local(day, rule.send_time),
                expires=day_bounds(day)[1],
                refs=refs,
                key=key,
                key_of=key_of,
                key_prefix=key_prefix,
                key_suffix=key_suffix,
            )

        self._at(planned, send)

    def _message(
        self,
        rule: Rule,
        *,
        planned: datetime,
        due: datetime,
        expires: datetime,
        refs: dict[str, Any] | None = None,
        anchor: datetime | None = None,
        row: dict[str, Any] | None = None,
        key: str = "",
        key_of: Any = None,
        key_prefix: str = "",
        key_suffix: str = "",
    ) -> str | None:
        """What the planner and then dispatch made of one due occurrence: the message's final
        status, "skip", or None when the rule was not on yet."""
        ctx, rng, patient = self.ctx, self.rng, self.patient
        if not self._rule_on(rule, planned):
            return None
        refs = refs or {}
        occurrence = _key_maker(key, key_of, key_prefix, key_suffix, anchor)
        if _outside_audience(rule, patient, timezone.localdate(planned)):
            return self._skip(rule, planned, SkipReason.OUTSIDE_AUDIENCE, occurrence=occurrence)
        channel, reason = self._channel(rule, planned)
        if reason is not None:
            return self._skip(rule, planned, reason, occurrence=occurrence)
        send_at = fit(max(due, planned), expires, ctx.profile)
        if send_at is None:
            return self._skip(rule, planned, SkipReason.STALE, occurrence=occurrence)
        if rule.holdout_percent and is_held_out(rule, patient.pk):
            return self._skip(rule, planned, SkipReason.HOLDOUT, occurrence=occurrence)
        language = patient.preferred_language
        template = ctx.templates.get((rule.pk, channel, language))
        if template is None:
            return self._skip(rule, planned, SkipReason.NO_TEMPLATE, occurrence=occurrence)
        plan_day = timezone.localdate(planned)
        context = message_context(
            rule=rule,
            patient=patient,
            profile=ctx.profile,
            refs=refs,
            due=Due(row or {}, "", due, expires, anchor_at=anchor),
            today=plan_day,
        )
        tokens = None
        if ctx.link_base and uses_links(template[1]):
            tokens = context[LINKS_KEY] = SeededTokens(ctx.link_base, rng)
        try:
            text = render_message(
                subject=template[0], body=template[1], context=context, channel=channel
            )
        except TemplateRenderError:
            return self._skip(rule, planned, SkipReason.TEMPLATE_ERROR, occurrence=occurrence)
        message = OutboxMessage(
            uuid=uuid.UUID(int=rng.getrandbits(128), version=4),
            rule=rule,
            patient=patient,
            purpose=rule.purpose,
            channel=channel,
            priority=rule.priority,
            due_at=send_at,
            next_attempt_at=send_at,
            expires_at=expires,
            subject=text.subject,
            body=text.body,
            anchor_at=anchor,
            created_at=planned,
            **channel_size(channel, text.body, patient.phone),
            **{name: obj for name, obj in refs.items()},
        )
        self.out.messages.append(message)
        self.out.keys.append((message, occurrence))
        links = [
            TrackedLink(token=token, message=message, rule=rule, url=url, created_at=planned)
            for url, token in (tokens.tokens.items() if tokens else ())
        ]
        self.out.links.extend(links)
        if send_at >= ctx.now:
            return MessageStatus.QUEUED
        self._dispatch(message, rule, send_at)
        arrived = message.status in (MessageStatus.SENT, MessageStatus.DELIVERED)
        if links and arrived and message.sent_at and rng.random() < CLICKED:
            clicked = message.sent_at + timedelta(minutes=1 + rng.expovariate(1 / 120))
            if clicked < ctx.now:
                links[0].clicks = 1 + (rng.random() < 0.3)
                links[0].first_clicked_at = clicked
        return message.status

    def _dispatch(self, message: OutboxMessage, rule: Rule, send_at: datetime) -> None:
        """The message's fate once due: attempts, status, delivery, the patient's reply."""
        rng, ctx = self.rng, self.ctx
        # One message at a time per patient, as the gate keeps MESSAGE_GAP_MINUTES apart.
        start = send_at
        if self.last_sent is not None:
            after_gap = self.last_sent + timedelta(minutes=settings.MESSAGE_GAP_MINUTES)
            moved = fit(after_gap, message.expires_at, ctx.profile) if after_gap > start else None
            start = moved or start
        start += timedelta(seconds=rng.randrange(5, 180))
        closes = at_local(timezone.localdate(start), ctx.profile.send_window_end)
        if start >= closes or start >= ctx.now:
            start = send_at  # the window's own opening is always allowed
        channel = message.channel
        outcomes = OUTCOMES[channel]
        status = rng.choices(list(outcomes), weights=list(outcomes.values()))[0]
        if not self._granted(message.purpose, channel, start):
            # Withdrawn between planning and sending (a STOP to an earlier message): the gate
            # stops it. The demo has no fallback texts, so it ends here.
            status, message.error = MessageStatus.DROPPED, ctx.withdrawn_error
        elif status == MessageStatus.DROPPED:
            message.error = ctx.stale_error
        message.status = status
        if status == MessageStatus.DROPPED:
            return
        # A few went through only on a second or third try after a provider hiccup.
        tries = 1 + (rng.random() < 0.04) + (rng.random() < 0.01)
        at = start
        for _try in range(tries - 1):
            self._attempt(message, at, Attempt.Outcome.TRANSIENT, TRANSIENT_ERROR)
            at += timedelta(minutes=2**_try)
        if at >= closes or at >= ctx.now:
            at = start
        message.attempts = tries
        if status == MessageStatus.UNKNOWN:
            self._attempt(message, at, Attempt.Outcome.UNKNOWN, UNKNOWN_ERROR)
            message.error = UNKNOWN_ERROR
            return
        if status == MessageStatus.FAILED:
            error, refused = rng.choice(FAILURES[channel])
            message.error = error
            if refused:
                self._attempt(message, at, Attempt.Outcome.PERMANENT, error)
                return
        self._attempt(message, at, Attempt.Outcome.SENT, "")
        message.sent_at = at + timedelta(seconds=rng.randint(1, 3))
        if message.sent_at >= closes:
            message.sent_at = at
        message.provider_id = f"SM{rng.getrandbits(128):032x}" if channel == Channel.SMS else ""
        self.last_sent = message.sent_at
        if status == MessageStatus.DELIVERED:
            message.delivered_at = message.sent_at + timedelta(seconds=rng.randint(3, 90))
        if status == MessageStatus.FAILED:
            return
        self._answer(message, rule)

    def _attempt(self, message: OutboxMessage, at: datetime, outcome: str, error: str) -> None:
        finished = at + timedelta(milliseconds=self.rng.randint(150, 2500))
        self.out.attempts.append(
            Attempt(
                message=message,
                channel=message.channel,
                started_at=at,
                finished_at=finished,
                outcome=outcome,
                error=error,
            )
        )

    def _answer(self, message: OutboxMessage, rule: Rule) -> None:
        """The patient's answer to a message that arrived: a confirmation, a word back, or
        "stop"."""
        rng, ctx = self.rng, self.ctx
        assert message.sent_at is not None  # noqa: S101 - only sent messages are answered
        answered = message.sent_at + timedelta(minutes=1 + rng.expovariate(1 / 90))
        appointment = message.appointment if rule.asks_confirmation else None
        if appointment is not None:
            if answered < min(appointment.starts_at, ctx.now) and rng.random() < CONFIRM_REPLY:
                message.replied_at = answered
                appointment.confirmed_at = answered
                appointment.confirmed_via = (
                    Appointment.ConfirmedVia.LINE
                    if message.channel == Channel.LINE
                    else Appointment.ConfirmedVia.REPLY
                )
                if appointment.status == Appointment.Status.BOOKED:
                    appointment.status = Appointment.Status.CONFIRMED
            return
        if answered < ctx.now and rng.random() < REPLY_OTHER.get(rule.kind, 0.03):
            message.replied_at = answered
        if answered < ctx.now and rng.random() < OPT_OUT.get(message.channel, 0.0):
            self._opt_out(message.channel, answered)

    def _opt_out(self, channel: str, at: datetime) -> None:
        """Every purpose granted on `channel` withdrawn, as consent_withdraw_all records a
        STOP reply or a LINE block: ledger entries, written with the patient's consent."""
        source, evidence = (
            (Source.SMS_KEYWORD, "回覆 STOP")
            if channel == Channel.SMS
            else (Source.LINE_FOLLOW, "封鎖 LINE 官方帳號")
        )
        for purpose in Purpose.values:
            if self._granted(purpose, channel, at):
                self.demo.consent_entries.append(
                    ConsentEntry(
                        patient=self.patient,
                        purpose=purpose,
                        channel=channel,
                        action=Action.WITHDRAW,
                        source=source,
                        evidence=evidence,
                        recorded_at=at,
                    )
                )
                self._consent_add(purpose, channel, at, Action.WITHDRAW)

    # --- consent at a moment ---------------------------------------------------------------------

    def _consent_add(self, purpose: str, channel: str, at: datetime, action: str) -> None:
        entries = self.consent.setdefault((purpose, channel), [])
        entries.append((at, action == Action.GRANT))
        entries.sort(key=lambda entry: entry[0])

    def _state(self, purpose: str, channel: str, at: datetime) -> bool | None:
        state = None
        for recorded, granted in self.consent.get((purpose, channel), ()):
            if recorded > at:
                break
            state = granted
        return state

    def _granted(self, purpose: str, channel: str, at: datetime) -> bool:
        return bool(self._state(purpose, channel, at))

    def _channel(self, rule: Rule, at: datetime) -> tuple[str, SkipReason | None]:
        """The first channel of the rule's order (the patient's preferred first) with consent
        and an address at `at`, or the reason there is none, as consent.selectors decides."""
        order = channel_order_for(rule, self.patient.preferred_channel)
        states = {channel: self._state(rule.purpose, channel, at) for channel in order}
        return demo_channel(order, states, self.addresses)

    def _skip(
        self,
        rule: Rule,
        planned: datetime,
        reason: SkipReason,
        key_of: Any = None,
        *,
        occurrence: Callable[[], str] | None = None,
    ) -> str:
        skip = Skip(rule=rule, patient=self.patient, reason=reason, at=planned)
        if occurrence is None:
            occurrence = _key_maker("", key_of, "", "", None)
        self.out.skips.append(skip)
        self.out.keys.append((skip, occurrence))
        return "skip"


def demo_channel(
    order: list[str], states: dict[str, bool | None], addresses: dict[str, str]
) -> tuple[str, SkipReason | None]:
    """The first channel of `order` with consent granted (`states`: True granted, False
    withdrawn or refused, None never asked) and an address, or the reason there is none, with
    consent.selectors.choose_channel's precedence."""
    for channel in order:
        if states.get(channel) and addresses.get(channel):
            return channel, None
    if any(states.get(channel) for channel in order):
        return "", SkipReason.NO_CONTACT_POINT
    if any(states.get(channel) is False for channel in order):
        return "", SkipReason.WITHDRAWN
    return "", SkipReason.NO_CONSENT


def _confirmed_by(appointment: Appointment, at: datetime) -> bool:
    return appointment.confirmed_at is not None and appointment.confirmed_at <= at


def _outside_audience(rule: Rule, patient: Patient, day: date) -> bool:
    if rule.sexes and patient.sex not in rule.sexes:
        return True
    if rule.min_age is None and rule.max_age is None:
        return False
    if patient.birth_date is None:
        return True
    age = age_on(patient.birth_date, day)
    return (rule.min_age is not None and age < rule.min_age) or (
        rule.max_age is not None and age > rule.max_age
    )


def _birthday_in(born: date, year: int) -> date:
    """The day a patient born on `born` is greeted in `year` (Feb 29 on Feb 28 in common
    years, as campaigns.kinds selects them)."""
    try:
        return born.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def _key_maker(
    key: str, key_of: Any, prefix: str, suffix: str, anchor: datetime | None
) -> Callable[[], str]:
    """The occurrence key as campaigns.kinds writes it, made once the row it names is saved."""
    if key:
        return lambda: key
    if isinstance(key_of, Appointment):
        return lambda: f"appointment:{key_of.pk}:{key_of.starts_at.astimezone(UTC).isoformat()}"
    return lambda: f"{prefix}:{key_of.pk}{suffix}"
