"""Every rule kind, declared once: who is due and when, what the text may name, what the gate
checks again before sending, and whether an undeliverable message becomes a call for staff.

A new kind is a RuleKind value (campaigns.models) and one Kind entry in KINDS below.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import Rule, RuleKind
from campaigns.sendwindow import LONGEST_CLOSURE_DAYS, at_local, day_bounds, is_open_day
from campaigns.templating import format_date, local_time
from patients.models import (
    Appointment,
    ClinicProfile,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
)
from reminders.models import GroupSend, LineLinkCode, OutboxMessage, Status

Row = Mapping[str, Any]
Refs = Mapping[str, Any]  # "appointment" → Appointment, … as loaded for a due message

RECALL_GRACE_DAYS = 7  # a recall missed while the worker was down is still sent this late
DOSE_LOOKAHEAD = timedelta(hours=24)
LONGEST_COURSE_DAYS = 90
LIVE_APPOINTMENT = [Appointment.Status.BOOKED, Appointment.Status.CONFIRMED]


@dataclass(frozen=True)
class Due:
    """One patient due for one occurrence of a rule."""

    row: Row  # the annotated values from the rule's query
    occurrence_key: str
    due_at: datetime
    expires_at: datetime  # the text is no use (or no longer true) from this moment
    refs: Mapping[str, int] = field(default_factory=dict)  # appointment_id, procedure_id, …
    anchor_at: datetime | None = None  # what the gate compares: the visit, dose or window
    # The text names a day before its anchor ("your visit on 12/7") and the clinic has no open
    # day left to send it on before then.
    no_open_day: bool = False


Expand = Callable[[Row], Iterator[Due]]
Sql = tuple[str, list[Any]]  # an SQL expression and its parameters (%s placeholders)
NULL: Sql = ("NULL", [])


@dataclass(frozen=True)
class Occurrences:
    """`expand` written as SQL, for planning a rule in one statement on PostgreSQL
    (campaigns.plan_sql): expressions over the due set's columns, named `d.<column>`, and over
    `o.<column>` of `join`, a join that turns one row into several occurrences (doses). Each
    must give what `expand` gives for the same row; PostgreSQL runs every planner test through
    them, SQLite through `expand`."""

    key: Sql
    due_at: Sql
    expires_at: Sql
    anchor_at: Sql = ("NULL::timestamptz", [])
    refs: Mapping[str, Sql] = field(default_factory=dict)
    no_open_day: Sql = ("false", [])
    join: Sql = ("", [])


@dataclass(frozen=True)
class Selection:
    """A rule's due set as one query, the path from its rows to the patient, and the expander
    turning each row into the occurrences it is due for, in Python and in SQL."""

    rows: QuerySet[Any]
    patient_ref: str
    expand: Expand
    occurrences: Occurrences


def _value(value: Any, cast: str) -> Sql:
    return f"%s::{cast}", [value]


def _case(column: str, values: Mapping[Any, Any], cast: str) -> Sql:
    """CASE `column` WHEN key THEN value … END, as `cast`."""
    if not values:
        return f"NULL::{cast}", []
    whens = " ".join("WHEN %s THEN %s" for _ in values)
    return f"(CASE {column} {whens} END)::{cast}", [x for pair in values.items() for x in pair]


def _case_by_day(column: str, values: Mapping[date, Any], cast: str, default: Sql = NULL) -> Sql:
    """CASE by the clinic-local day a timestamp `column` falls on: that day's value."""
    if not values:
        return default
    whens, params = [], []
    for day, value in values.items():
        whens.append(f"WHEN {column} >= %s AND {column} < %s THEN %s::{cast}")
        params += [*day_bounds(day), value]
    return f"(CASE {' '.join(whens)} ELSE {default[0]} END)", [*params, *default[1]]


def _local_midnight(column: str, days: int = 0) -> Sql:
    """The start of the clinic-local day of a date `column` (plus `days`), as a timestamp."""
    return f"(({column} + {days:d})::timestamp AT TIME ZONE %s)", [
        timezone.get_current_timezone_name()
    ]


def _concat(*parts: str | Sql) -> Sql:
    """Text and SQL expressions joined with ||: a str is a literal, an Sql an expression."""
    texts, params = [], []
    for part in parts:
        if isinstance(part, str):
            texts.append("%s::text")
            params.append(part)
        else:
            texts.append(f"({part[0]})::text")
            params += part[1]
    return " || ".join(texts), params


@dataclass(frozen=True)
class Kind:
    select: Callable[[Rule, date, datetime, ClinicProfile], Selection]
    fields: tuple[str, ...]  # the query's own values, beside the common ones
    template_fields: Mapping[str, tuple[str, ...]]  # what its templates may name
    context: Callable[[Refs, Due, str, date], dict[str, Any]]  # refs, due, language, today
    sample: Callable[[str, date], dict[str, Any]]  # language, today: for previews
    still_true: Callable[[OutboxMessage], str] = lambda message: ""  # why not, or ""
    # The values of a queued message's due row that `context` reads, read again: its text for
    # a later channel is made only if it falls through to that channel (campaigns.planner).
    row_of: Callable[[OutboxMessage], Row] = lambda message: {}
    call_if_undeliverable: bool = False  # a person phones when no channel can deliver it


def days_in(days: list[date], field_name: str) -> Q:
    """`field_name` (a datetime) falls on any of `days` in the clinic's time zone."""
    q = Q()
    for day in days:
        start, end = day_bounds(day)
        q |= Q(**{f"{field_name}__gte": start, f"{field_name}__lt": end})
    return q


def _zh(language: str) -> bool:
    return language != "en"


# --- birthday ------------------------------------------------------------------------------------


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _birthday(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    targets = {}
    for offset in rule.offsets:
        birthday = today - timedelta(days=offset)
        targets[birthday.month * 100 + birthday.day] = birthday
        if (birthday.month, birthday.day) == (2, 28) and not _leap(birthday.year):
            targets[229] = birthday  # born on Feb 29: greeted on Feb 28 in common years
    rows = Patient.objects.filter(birth_mmdd__in=list(targets), birth_date__isnull=False)
    send_at, expires = at_local(today, rule.send_time), day_bounds(today)[1]  # once, not per row

    def expand(row: Row) -> Iterator[Due]:
        birthday = targets[row["birth_mmdd"]]
        yield Due(row, f"birthday:{birthday.isoformat()}", send_at, expires)

    days = {mmdd: birthday.isoformat() for mmdd, birthday in targets.items()}
    occurrences = Occurrences(
        key=_concat("birthday:", _case("d.birth_mmdd", days, "text")),
        due_at=_value(send_at, "timestamptz"),
        expires_at=_value(expires, "timestamptz"),
    )
    return Selection(rows, "id", expand, occurrences)


def _birthday_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    return {}  # the patient's age is in every context


# --- post-op -------------------------------------------------------------------------------------


def _postop(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    discharge_days = {today - timedelta(days=o): o for o in rule.offsets}
    rows = Procedure.objects.filter(days_in(list(discharge_days), "discharged_at"))
    if rule.care_plan_key:
        rows = rows.filter(care_plan_key=rule.care_plan_key)
    rows = rows.annotate(procedure_id=F("id"), discharged=F("discharged_at"))
    send_at, expires = at_local(today, rule.send_time), day_bounds(today)[1]
    zone = timezone.get_current_timezone()

    def expand(row: Row) -> Iterator[Due]:
        discharged = row["discharged"]
        offset = discharge_days[timezone.localtime(discharged, zone).date()]
        yield Due(
            row,
            f"procedure:{row['procedure_id']}:day{offset}",
            discharged if offset == 0 else send_at,
            expires,
            refs={"procedure_id": row["procedure_id"]},
        )

    on_the_day = [day for day, offset in discharge_days.items() if offset == 0]
    occurrences = Occurrences(
        key=_concat(
            "procedure:",
            ("d.procedure_id", []),
            ":day",
            _case_by_day("d.discharged", discharge_days, "int"),
        ),
        # The instructions of the day go at discharge: a day-0 offset is today only.
        due_at=_on_the_day("d.discharged", on_the_day[0], send_at)
        if on_the_day
        else _value(send_at, "timestamptz"),
        expires_at=_value(expires, "timestamptz"),
        refs={"procedure_id": ("d.procedure_id", [])},
    )
    return Selection(rows, "patient_id", expand, occurrences)


def _on_the_day(column: str, day: date, otherwise: datetime) -> Sql:
    """`column` itself when it falls on `day`, else `otherwise`."""
    start, end = day_bounds(day)
    return (
        f"(CASE WHEN {column} >= %s AND {column} < %s THEN {column} ELSE %s::timestamptz END)",
        [start, end, otherwise],
    )


def _postop_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    procedure = refs["procedure"]
    discharged = timezone.localtime(procedure.discharged_at).date()
    return {
        "procedure": {
            "type": procedure.procedure_type,
            "discharge_date": format_date(discharged, language),
            "days_since": (today - discharged).days,
        }
    }


def _postop_sample(language: str, today: date) -> dict[str, Any]:
    return {
        "procedure": {
            "type": "白內障手術" if _zh(language) else "cataract surgery",
            "discharge_date": format_date(today - timedelta(days=3), language),
            "days_since": 3,
        }
    }


# --- medication doses ----------------------------------------------------------------------------


def _dose(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    rows = (
        Prescription.objects.filter(
            dose_reminders=True,
            start_date__lte=today + timedelta(days=1),
            start_date__gt=today - timedelta(days=LONGEST_COURSE_DAYS),
        )
        .exclude(frequency="PRN")
        .annotate(
            prescription_id=F("id"),
            start=F("start_date"),
            days=F("days_supplied"),
            times=F("dose_times"),
        )
    )

    dose_times: dict[tuple[date, str], datetime] = {}  # a few clock times shared by many rows

    def expand(row: Row) -> Iterator[Due]:
        last_day = row["start"] + timedelta(days=row["days"] - 1)
        for day in (today, today + timedelta(days=1)):
            if not row["start"] <= day <= last_day:
                continue
            for clock in row["times"] or []:
                dose_at = dose_times.get((day, clock))
                if dose_at is None:
                    dose_at = dose_times[day, clock] = at_local(day, time.fromisoformat(clock))
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

    # Each dose time of the row (its JSON list) on today and tomorrow, each offset before it.
    zone = timezone.get_current_timezone_name()
    join = (
        """CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT dd.day, c.clock, m.minutes,
                    ((dd.day + c.clock::time) AT TIME ZONE %s) AS dose_at
                FROM jsonb_array_elements_text(COALESCE(d.times, '[]'::jsonb)) AS c(clock),
                    unnest(%s::date[]) AS dd(day), unnest(%s::int[]) AS m(minutes)
                WHERE d.start <= dd.day AND dd.day <= d.start + (d.days - 1)
            ) AS x
            WHERE x.dose_at > %s AND x.dose_at - x.minutes * interval '1 minute' <= %s
        ) AS o""",
        [zone, [today, today + timedelta(days=1)], list(rule.offsets), now, now + DOSE_LOOKAHEAD],
    )
    occurrences = Occurrences(
        key=_concat(
            "dose:",
            ("d.prescription_id", []),
            ":",
            ("to_char(o.day, 'YYYY-MM-DD')", []),
            "T",
            ("o.clock", []),
            ":",
            ("o.minutes", []),
        ),
        due_at=("o.dose_at - o.minutes * interval '1 minute'", []),
        expires_at=("o.dose_at", []),
        anchor_at=("o.dose_at", []),
        refs={"prescription_id": ("d.prescription_id", [])},
        join=join,
    )
    return Selection(rows, "patient_id", expand, occurrences)


def _dose_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    prescription = refs["prescription"]
    assert due.anchor_at is not None  # noqa: S101 - every dose occurrence has its dose time
    return {
        "prescription": {
            "drug": prescription.drug,
            "dose": prescription.dose,
            "dose_time": local_time(due.anchor_at),
        }
    }


def _dose_still_true(message: OutboxMessage) -> str:
    prescription = message.prescription
    if prescription is None or message.anchor_at is None:
        return _("dose time changed")
    if not prescription.dose_reminders:
        return _("dose reminders turned off")
    dose_at = timezone.localtime(message.anchor_at)
    still_prescribed = prescription.start_date <= dose_at.date() <= prescription.end_date
    if not still_prescribed or dose_at.strftime("%H:%M") not in prescription.dose_times:
        return _("dose time changed")
    return ""


# --- chronic refills -----------------------------------------------------------------------------


def _refill(anchor: str) -> Callable[[Rule, date, datetime, ClinicProfile], Selection]:
    def select(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
        targets = {today - timedelta(days=o): o for o in rule.offsets}
        rows = RefillWindow.objects.filter(
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

        send_at = at_local(today, rule.send_time)
        bounds: dict[date, tuple[datetime, datetime]] = {}  # windows share a few dates

        def bounds_of(day: date) -> tuple[datetime, datetime]:
            if day not in bounds:
                bounds[day] = day_bounds(day)
            return bounds[day]

        def expand(row: Row) -> Iterator[Due]:
            offset = targets[row["anchor_day"]]
            yield Due(
                row,
                f"refill:{row['window_id']}:{anchor}{offset:+d}",
                send_at,
                bounds_of(row["window_closes"])[1],
                refs={"refill_window_id": row["window_id"], "prescription_id": row["rx_id"]},
                # The window as the text states it, from its opening to the end of its last
                # day: the gate drops the message if the window moves before it goes out.
                anchor_at=bounds_of(row["window_opens"])[0],
            )

        offsets = {day: f"{offset:+d}" for day, offset in targets.items()}
        occurrences = Occurrences(
            key=_concat(
                "refill:", ("d.window_id", []), f":{anchor}", _case("d.anchor_day", offsets, "text")
            ),
            due_at=_value(send_at, "timestamptz"),
            expires_at=_local_midnight("d.window_closes", days=1),
            anchor_at=_local_midnight("d.window_opens"),
            refs={"refill_window_id": ("d.window_id", []), "prescription_id": ("d.rx_id", [])},
        )
        return Selection(rows, "prescription__patient_id", expand, occurrences)

    return select


REFILL_FIELDS = ("window_id", "rx_id", "window_opens", "window_closes", "anchor_day")


def _refill_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    window = refs["refill_window"]
    return {
        "prescription": {
            "drug": refs["prescription"].drug,
            "refill_number": window.number,
            "opens_on": format_date(window.opens_on, language),
            "closes_on": format_date(window.closes_on, language),
        }
    }


def _refill_still_true(message: OutboxMessage) -> str:
    window = message.refill_window
    if window is None:
        return _("refill window removed")
    if window.picked_up_on:
        return _("refill already picked up")
    if message.prescription is None or not message.prescription.refill_reminders:
        return _("refill reminders turned off")
    # The text names the window's dates: planned as its opening and the end of its last day.
    if (message.anchor_at, message.expires_at) != (
        day_bounds(window.opens_on)[0],
        day_bounds(window.closes_on)[1],
    ):
        return _("refill window changed")
    return ""


# --- appointments --------------------------------------------------------------------------------


def send_day_before(visit_day: date, days_before: int, profile: ClinicProfile) -> date:
    """The day a message meant for `days_before` days ahead of the visit goes out: that day, or
    the last open day before it when the clinic is closed then."""
    day = visit_day - timedelta(days=days_before)
    for _day in range(LONGEST_CLOSURE_DAYS):  # a holiday run can outlast a week (春節)
        if is_open_day(day, profile):
            return day
        day -= timedelta(days=1)
    raise ValueError(f"the clinic is closed every day of the {LONGEST_CLOSURE_DAYS} days before")


def _appointment(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    # A message that names a day before the visit ("your visit is on 12/3") goes out on the
    # last open day before it: today also sends for the closed days that follow. Sent on the
    # visit day itself, "please confirm" would come too late.
    visit_days: dict[date, int] = {}
    for offset in rule.offsets:
        day = today
        for _day in range(LONGEST_CLOSURE_DAYS):
            visit_days.setdefault(day - timedelta(days=offset), offset)
            day += timedelta(days=1)
            if offset >= 0 or not is_open_day(today, profile) or is_open_day(day, profile):
                break
    rows = Appointment.objects.filter(
        days_in(list(visit_days), "starts_at"), status__in=LIVE_APPOINTMENT
    ).annotate(
        appointment_id=F("id"),
        starts=F("starts_at"),
        appointment_status=F("status"),
        visit_department=F("department"),
    )

    send_at = at_local(today, rule.send_time)
    zone = timezone.get_current_timezone()
    # Per visit day, worked out once for its many appointments: the day's start, and whether
    # its open day to send on has passed (booked late, or planned on a closed day).
    visit_facts: dict[date, tuple[datetime, bool]] = {}

    def facts(visit_day: date, offset: int) -> tuple[datetime, bool]:
        if visit_day not in visit_facts:
            passed = offset < 0 and send_day_before(visit_day, -offset, profile) != today
            visit_facts[visit_day] = (day_bounds(visit_day)[0], passed)
        return visit_facts[visit_day]

    def expand(row: Row) -> Iterator[Due]:
        starts = row["starts"]
        visit_day = timezone.localtime(starts, zone).date()
        offset = visit_days[visit_day]
        expires, passed = starts, False
        if offset < 0:
            day_starts, passed = facts(visit_day, offset)
            expires = min(starts, day_starts)
        yield Due(
            row,
            f"appointment:{row['appointment_id']}:{starts.astimezone(UTC).isoformat()}",
            send_at,
            expires,
            refs={"appointment_id": row["appointment_id"]},
            anchor_at=starts,
            no_open_day=passed,
        )

    before = {day: facts(day, offset) for day, offset in visit_days.items() if offset < 0}
    day_starts = _case_by_day("d.starts", {day: f[0] for day, f in before.items()}, "timestamptz")
    occurrences = Occurrences(
        key=_concat("appointment:", ("d.appointment_id", []), ":", _iso_utc("d.starts")),
        due_at=_value(send_at, "timestamptz"),
        # LEAST ignores the NULL of a visit day with no day-before offset: the visit itself.
        expires_at=(f"LEAST(d.starts, {day_starts[0]})", day_starts[1]),
        anchor_at=("d.starts", []),
        refs={"appointment_id": ("d.appointment_id", [])},
        no_open_day=_case_by_day(
            "d.starts", {day: f[1] for day, f in before.items()}, "boolean", ("false", [])
        ),
    )
    return Selection(rows, "patient_id", expand, occurrences)


def _iso_utc(column: str) -> Sql:
    """A timestamp as Python's isoformat() of it in UTC: 2026-12-05T02:30:00+00:00, with
    .ffffff only when it has microseconds."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN {column} = "
        f"date_trunc('second', {column}) THEN '' ELSE to_char({utc}, '.US') END || '+00:00'",
        [],
    )


def _appointment_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    appointment = refs["appointment"]
    starts = timezone.localtime(appointment.starts_at)
    return {
        "appointment": {
            "date": format_date(starts.date(), language),
            "time": starts.strftime("%H:%M"),
            "department": appointment.department,
            "doctor": appointment.doctor,
            "location": appointment.location,
            "bring_notes": appointment.bring_notes,
        }
    }


def _appointment_sample(language: str, today: date) -> dict[str, Any]:
    zh = _zh(language)
    return {
        "appointment": {
            "date": format_date(today + timedelta(days=7), language),
            "time": "14:30",
            "department": "家醫科" if zh else "Family medicine",
            "doctor": "王醫師" if zh else "Dr Wang",
            "location": "二樓 3 診" if zh else "2F, room 3",
            "bring_notes": "健保卡、檢驗報告" if zh else "NHI card, lab report",
        }
    }


def _appointment_still_true(message: OutboxMessage) -> str:
    appointment = message.appointment
    if appointment is None:
        return _("appointment removed")
    if appointment.status not in LIVE_APPOINTMENT:
        return _("appointment %(status)s") % {"status": appointment.get_status_display()}
    if appointment.starts_at != message.anchor_at:
        return _("appointment rescheduled")
    return ""


# --- recall --------------------------------------------------------------------------------------


def _recall(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    latest_allowed = today - timedelta(days=max(rule.offsets))
    earliest = latest_allowed - timedelta(days=RECALL_GRACE_DAYS)
    visits = Visit.objects.filter(patient_id=OuterRef("id"))
    future = Appointment.objects.filter(
        patient_id=OuterRef("id"), starts_at__gte=now, status__in=LIVE_APPOINTMENT
    )
    last = visits.order_by("-visited_on", "-id")
    rows = Patient.objects.filter(
        Exists(visits.filter(visited_on__gte=earliest, visited_on__lte=latest_allowed)),
        ~Exists(visits.filter(visited_on__gt=latest_allowed)),
        ~Exists(future),
    ).annotate(
        last_visit=Subquery(last.values("visited_on")[:1]),
        visit_department=Subquery(last.values("department")[:1]),
    )
    if not rule.conditions.exists():  # no tags chosen: anyone with a chronic condition
        rows = rows.filter(
            Exists(Patient.conditions.through.objects.filter(patient_id=OuterRef("id")))
        )

    send_at, expires = at_local(today, rule.send_time), day_bounds(today)[1]

    def expand(row: Row) -> Iterator[Due]:
        yield Due(row, f"recall:{row['last_visit'].isoformat()}", send_at, expires)

    occurrences = Occurrences(
        key=_concat("recall:", ("to_char(d.last_visit, 'YYYY-MM-DD')", [])),
        due_at=_value(send_at, "timestamptz"),
        expires_at=_value(expires, "timestamptz"),
    )
    return Selection(rows, "id", expand, occurrences)


def _recall_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    return {
        "visit": {
            "last_date": format_date(due.row["last_visit"], language),
            "department": due.row.get("visit_department", ""),
        }
    }


def _recall_row(message: OutboxMessage) -> Row:
    last = date.fromisoformat(message.occurrence_key.removeprefix("recall:"))
    visits = Visit.objects.filter(patient_id=message.patient_id, visited_on=last)
    department = visits.order_by("-id").values_list("department", flat=True).first()
    return {"last_visit": last, "visit_department": department or ""}


def _recall_sample(language: str, today: date) -> dict[str, Any]:
    return {
        "visit": {
            "last_date": format_date(date(today.year, 1, 1), language),
            "department": "家醫科" if _zh(language) else "Family medicine",
        }
    }


def _prescription_sample(language: str, today: date) -> dict[str, Any]:
    return {
        "prescription": {
            "drug": "Amlodipine 5mg",
            "dose": "1 顆" if _zh(language) else "1 tablet",
            "dose_time": "08:00",
            "refill_number": 2,
            "opens_on": format_date(today, language),
            "closes_on": format_date(today + timedelta(days=9), language),
        }
    }


def _nothing(language: str, today: date) -> dict[str, Any]:
    return {}


# --- how was your visit? -----------------------------------------------------------------------

# A survey counts as asked once it is queued or has gone (or may have gone) out; a dropped or
# failed one did not ask.
SURVEY_ASKED = [Status.QUEUED, Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNKNOWN]


def survey_asked_since(send_at: datetime) -> datetime:
    """Surveys due after this moment keep a patient from being asked again at `send_at`."""
    return send_at - timedelta(days=settings.SURVEY_MIN_DAYS)


def _visit_survey(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    # Visits `offsets` days ago, one per patient and day (the first recorded), of patients not
    # asked in the last SURVEY_MIN_DAYS: all in SQL. A Visit is an attended visit.
    visit_days = {today - timedelta(days=o): o for o in rule.offsets}
    send_at, expires = at_local(today, rule.send_time), day_bounds(today)[1]
    asked = OutboxMessage.objects.filter(
        patient_id=OuterRef("patient_id"),
        rule__kind=RuleKind.VISIT_SURVEY,
        status__in=SURVEY_ASKED,
        due_at__gt=survey_asked_since(send_at),
    )
    same_day_before = Visit.objects.filter(
        patient_id=OuterRef("patient_id"), visited_on=OuterRef("visited_on"), id__lt=OuterRef("id")
    )
    rows = (
        Visit.objects.filter(visited_on__in=list(visit_days))
        .filter(~Exists(same_day_before), ~Exists(asked))
        .annotate(
            visit_id=F("id"),
            visited=F("visited_on"),
            visit_department=F("department"),
            visit_doctor=F("doctor"),
        )
    )

    def expand(row: Row) -> Iterator[Due]:
        yield Due(row, f"survey:visit:{row['visit_id']}", send_at, expires)

    occurrences = Occurrences(
        key=_concat("survey:visit:", ("d.visit_id", [])),
        due_at=_value(send_at, "timestamptz"),
        expires_at=_value(expires, "timestamptz"),
    )
    return Selection(rows, "patient_id", expand, occurrences)


def _visit_survey_context(refs: Refs, due: Due, language: str, today: date) -> dict[str, Any]:
    return {
        "visit": {
            "date": format_date(due.row["visited"], language),
            "department": due.row.get("visit_department", ""),
            "doctor": due.row.get("visit_doctor", ""),
        }
    }


def _visit_survey_row(message: OutboxMessage) -> Row:
    visit_id = message.occurrence_key.removeprefix("survey:visit:")
    visit = Visit.objects.filter(pk=int(visit_id) if visit_id.isdigit() else 0).first()
    if visit is None:
        return {}  # gone: its text can't be made (a template error for that channel)
    return {
        "visited": visit.visited_on,
        "visit_department": visit.department,
        "visit_doctor": visit.doctor,
    }


def _visit_survey_sample(language: str, today: date) -> dict[str, Any]:
    zh = _zh(language)
    return {
        "visit": {
            "date": format_date(today - timedelta(days=1), language),
            "department": "家醫科" if zh else "Family medicine",
            "doctor": "王醫師" if zh else "Dr Wang",
        }
    }


def _visit_survey_still_true(message: OutboxMessage) -> str:
    # Two visits on two offsets' days may both be due in one pass: the first asks.
    asked = (
        OutboxMessage.objects.filter(
            patient_id=message.patient_id,
            rule__kind=RuleKind.VISIT_SURVEY,
            status__in=[Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNKNOWN],
            due_at__gt=survey_asked_since(message.due_at),
        )
        .exclude(pk=message.pk)
        .exists()
    )
    return _("asked how a visit was lately") if asked else ""


# --- LINE link code (sent by staff, never planned) -----------------------------------------------


def _line_link_still_true(message: OutboxMessage) -> str:
    # Keyed "line_link:<code id>" (reminders.linking.line_link_sms_queue).
    code_id = message.occurrence_key.removeprefix("line_link:")
    code = LineLinkCode.objects.filter(pk=int(code_id) if code_id.isdigit() else 0).first()
    if code is None or code.revoked_at is not None:
        return _("a newer LINE link code was made")
    if code.used_at is not None:
        return _("LINE already linked")
    return ""


def _group_still_true(message: OutboxMessage) -> str:
    # Keyed "group:<GroupSend id>" (reminders.groups). A day group's message is about the
    # patient's appointment that day: cancelled or moved to another doctor or day since, the
    # patient is no longer in the group and the message stays unsent.
    from reminders.groups import GroupDefinition, group_patients  # it reads the policy: cyclic

    send_id = message.occurrence_key.removeprefix("group:")
    send = GroupSend.objects.filter(pk=int(send_id) if send_id.isdigit() else 0).first()
    if send is None:
        return _("the group message is gone")
    if send.kind != GroupSend.Kind.DAY:
        return ""
    members = group_patients(GroupDefinition.from_dict(send.definition), today=timezone.localdate())
    if not members.filter(pk=message.patient_id).exists():
        return _("no longer in the group: the appointment was cancelled or moved")
    return ""


# Kinds whose messages staff queue by hand (the LINE link code, reminders.linking; a message
# written in the inbox, reminders.inbox), gated like any other: the planner selects nothing.
NEVER_PLANNED = frozenset({RuleKind.LINE_LINK, RuleKind.STAFF, RuleKind.GROUP})


def _never_planned(rule: Rule, today: date, now: datetime, profile: ClinicProfile) -> Selection:
    def expand(row: Row) -> Iterator[Due]:
        yield from ()

    nothing = Occurrences(key=NULL, due_at=NULL, expires_at=NULL)
    return Selection(Patient.objects.none(), "id", expand, nothing)


REFILL_TEMPLATE_FIELDS = {"prescription": ("drug", "refill_number", "opens_on", "closes_on")}

KINDS: dict[str, Kind] = {
    RuleKind.BIRTHDAY: Kind(
        select=_birthday,
        fields=("birth_mmdd",),
        template_fields={"patient": ("age",)},
        context=_birthday_context,
        sample=_nothing,
    ),
    RuleKind.POSTOP: Kind(
        select=_postop,
        fields=("procedure_id", "discharged"),
        template_fields={"procedure": ("type", "discharge_date", "days_since")},
        context=_postop_context,
        sample=_postop_sample,
        call_if_undeliverable=True,
    ),
    RuleKind.DOSE: Kind(
        select=_dose,
        fields=("prescription_id", "start", "days", "times"),
        template_fields={"prescription": ("drug", "dose", "dose_time")},
        context=_dose_context,
        sample=_prescription_sample,
        still_true=_dose_still_true,
    ),
    RuleKind.REFILL_OPENS: Kind(
        select=_refill("opens_on"),
        fields=REFILL_FIELDS,
        template_fields=REFILL_TEMPLATE_FIELDS,
        context=_refill_context,
        sample=_prescription_sample,
        still_true=_refill_still_true,
    ),
    RuleKind.REFILL_CLOSES: Kind(
        select=_refill("closes_on"),
        fields=REFILL_FIELDS,
        template_fields=REFILL_TEMPLATE_FIELDS,
        context=_refill_context,
        sample=_prescription_sample,
        still_true=_refill_still_true,
    ),
    RuleKind.APPOINTMENT: Kind(
        select=_appointment,
        fields=("appointment_id", "starts", "appointment_status", "visit_department"),
        template_fields={
            "appointment": ("date", "time", "department", "doctor", "location", "bring_notes")
        },
        context=_appointment_context,
        sample=_appointment_sample,
        still_true=_appointment_still_true,
        call_if_undeliverable=True,
    ),
    RuleKind.RECALL: Kind(
        select=_recall,
        fields=("last_visit", "visit_department"),
        template_fields={"visit": ("last_date", "department")},
        context=_recall_context,
        sample=_recall_sample,
        row_of=_recall_row,
    ),
    RuleKind.VISIT_SURVEY: Kind(
        select=_visit_survey,
        fields=("visit_id", "visited", "visit_department", "visit_doctor"),
        template_fields={"visit": ("date", "department", "doctor")},
        context=_visit_survey_context,
        sample=_visit_survey_sample,
        still_true=_visit_survey_still_true,
        row_of=_visit_survey_row,
    ),
    RuleKind.LINE_LINK: Kind(
        select=_never_planned,
        fields=(),
        template_fields={},
        context=_birthday_context,
        sample=_nothing,
        still_true=_line_link_still_true,
    ),
    RuleKind.STAFF: Kind(
        select=_never_planned,
        fields=(),
        template_fields={},
        context=_birthday_context,
        sample=_nothing,
    ),
    RuleKind.GROUP: Kind(
        select=_never_planned,
        still_true=_group_still_true,
        fields=(),
        template_fields={},
        context=_birthday_context,
        sample=_nothing,
    ),
}
