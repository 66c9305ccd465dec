"""Planning a rule in one statement on PostgreSQL: the due set, its occurrences, the send
policy's decision, the send time and the writes, all in SQL.

The planner's Python walk (campaigns.planner) reads each due row, asks `plan_decision`, and
writes outbox and skip rows: about 250 µs of Python per due row against 15 µs for the database
to find it. Here the same steps are one `WITH … INSERT … SELECT` per rule:

    d   the rule's due set: its kind's selection with `due_annotations` (campaigns.planner)
    e   each row's occurrences (kinds.Occurrences: the SQL face of the kind's `expand`)
    f   without those already in the outbox; the channel chosen, the moment it may go from
    g   the send time: the clinic's send window (campaigns.sendwindow.fit) for the few days
        a planning pass can reach, worked out in Python and joined as a table
    h   the reason it is skipped, if it is: `plan_decision`'s checks in its order, then the
        template check of `planner.outbox_rows`
    then the queued rows into the outbox and the skips into campaigns_skip, each with ON
    CONFLICT as the Python walk writes them.

d and g are MATERIALIZED: inlined, PostgreSQL would compute the due set's subqueries (the
frequency cap's count, the rule's conditions) and the send time again wherever a later step
names their columns. The consent states are joined by index, one row per channel, as the
hand-written SQL of bench/planner.py reads them: as subqueries of the due set, PostgreSQL hashed
every patient's consent for each channel, 40-80 ms a rule whatever its size.

`plan_decision` stays the reference: SQLite, dry runs, the forecast and the patient's plan use
it, and the tests run every planner test through both (SQLite: Python; PostgreSQL: this).
"""

import json
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from campaigns.kinds import KINDS, Occurrences, Sql
from campaigns.models import Rule, SkipReason
from campaigns.policy import limits_audience
from campaigns.sendwindow import at_local, day_bounds, is_open_day, next_send_time
from clinic_crm.copy_insert import default_values
from consent.models import Purpose
from patients.models import Appointment, ClinicProfile, Language, age_on
from reminders.channels.base import channel_configured
from reminders.models import OutboxMessage, Status

Later = Callable[[str, str, str], list[str]]  # preferred, chosen channel, language → the rest
HasTemplate = Callable[[str, str], bool]  # channel, language → the rule has a text for them
STATES = ("granted", "withdrawn")  # per channel: joined here, not subqueries of the due set
# Days around today whose send window the statement knows: every moment a pass plans from
# (now, a send time today, a discharge today, a dose up to DOSE_LOOKAHEAD ahead) falls in them.
# A moment outside would leave the send time NULL, which the outbox refuses (NOT NULL): loud.
WINDOW_DAYS = range(-1, 4)


def plan_rule_sql(
    rule: Rule,
    *,
    rows: models.QuerySet[Any],
    occurrences: Occurrences,
    has_template: HasTemplate,
    later: Later,
    now: datetime,
    profile: ClinicProfile,
) -> tuple[int, Counter[str]]:
    """Plan `rule`'s due set `rows` (campaigns.planner.due_set) in one statement: the number
    of messages queued and the skips by reason. `later(preferred, channel, language)` gives a
    message's channels_left as the Python walk does."""
    kind = KINDS[rule.kind]
    due_sql, due_params = rows.order_by().query.sql_with_params()
    refs = dict(occurrences.refs)
    parts: list[Sql] = [
        (f"WITH d AS MATERIALIZED ({due_sql}),", list(due_params)),
        ("e AS (SELECT d.*, ", []),
        _aliased(
            [
                (occurrences.key, "_key"),
                (occurrences.due_at, "_due"),
                (occurrences.expires_at, "_expires"),
                (occurrences.anchor_at, "_anchor"),
                (occurrences.no_open_day, "_no_open_day"),
                *((sql, f"_ref_{name}") for name, sql in refs.items()),
            ]
        ),
        _consent_states(rule),
        (" FROM d ", []),
        _consent_joins(rule),
        occurrences.join,
        ("),", []),
        ("f AS (SELECT e.*, ", []),
        _chosen_channel(rule),
        (
            " AS _channel, GREATEST(e._due, %s) AS _from FROM e WHERE NOT EXISTS ("
            "SELECT 1 FROM reminders_outboxmessage x WHERE x.rule_id = %s"
            " AND x.patient_id = e.pid AND x.occurrence_key = e._key)),",
            [now, rule.pk],
        ),
        ("g AS MATERIALIZED (SELECT f.*, ", []),
        _send_time("f._from", timezone.localdate(now), profile),
        (" AS _send FROM f),", []),
        ("h AS (SELECT g.*, ", []),
        _reason(rule, kind.fields, has_template, now),
        (" AS _reason FROM g),", []),
        _insert_messages(rule, later, refs),
        (
            ", skipped AS (INSERT INTO campaigns_skip (rule_id, patient_id, occurrence_key,"
            " reason, at) SELECT %s, h.pid, h._key, h._reason, %s FROM h"
            " WHERE h._reason IS NOT NULL ON CONFLICT (rule_id, patient_id, occurrence_key)"
            " DO UPDATE SET reason = EXCLUDED.reason, at = EXCLUDED.at RETURNING reason)"
            " SELECT '', count(*) FROM queued"
            " UNION ALL SELECT reason, count(*) FROM skipped GROUP BY reason",
            [rule.pk, now],
        ),
    ]
    sql = " ".join(text for text, _params in parts)
    params = [param for _text, part_params in parts for param in part_params]
    with transaction.atomic(), connection.cursor() as cursor:
        # As in the importer (patients.imports.importer._probe_by_index): with the default cost
        # of a random read PostgreSQL joins a due set of a few thousand rows to the patients by
        # reading all of them.
        cursor.execute("SET LOCAL random_page_cost = 1.1")
        # The due set and the decided rows are kept for the two INSERTs: at a million patients
        # a rule's 70,000 due rows are 30 MB, which the default 4 MB would write to disk.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        # Compiling the statement (JIT, above a cost a 1 M rule reaches) took 80 ms of a
        # statement that spends its time in index lookups, not in evaluating expressions.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, params)
        counts = dict(cursor.fetchall())
    queued = counts.pop("")
    return queued, Counter({SkipReason(reason): n for reason, n in counts.items()})


def _consent_states(rule: Rule) -> Sql:
    """consent.selectors.consent_annotations' `<channel>_granted` and `<channel>_withdrawn`,
    from the patient's one consent state row per channel (`_consent_joins`)."""
    columns = [
        f", c_{channel}.granted IS TRUE AS {channel}_granted,"
        f" c_{channel}.granted IS FALSE AS {channel}_withdrawn"
        for channel in rule.channel_order
    ]
    return "".join(columns), []


def _consent_joins(rule: Rule) -> Sql:
    """The patient's consent state for the rule's purpose on each of its channels, if any."""
    return (
        " ".join(
            f"LEFT JOIN consent_consentstate c_{channel} ON c_{channel}.patient_id = d.pid"
            f" AND c_{channel}.purpose = %s AND c_{channel}.channel = %s"
            for channel in rule.channel_order
        ),
        [x for channel in rule.channel_order for x in (rule.purpose, channel)],
    )


def _aliased(columns: list[tuple[Sql, str]]) -> Sql:
    return (
        ", ".join(f"{sql} AS {alias}" for (sql, _params), alias in columns),
        [param for (_sql, params), _alias in columns for param in params],
    )


def _usable(channel: str, row: str) -> str:
    """The patient consented to the rule's purpose on `channel` and can be reached there."""
    return f"COALESCE({row}.{channel}_granted AND {row}.{channel}_address, false)"


def _chosen_channel(rule: Rule) -> Sql:
    """policy.pick_channel's channel: the patient's preferred channel first when usable, else
    the first usable of the rule's channels in order; only channels configured here. NULL when
    none is (the reason is `_reason`'s)."""
    configured = [channel for channel in rule.channel_order if channel_configured(channel)]
    if not configured:
        return "NULL::text", []
    whens = [f"WHEN e.preferred = %s AND {_usable(c, 'e')} THEN %s" for c in configured]
    whens += [f"WHEN {_usable(c, 'e')} THEN %s" for c in configured]
    params: list[Any] = [x for c in configured for x in (c, c)] + configured
    return f"(CASE {' '.join(whens)} END)", params


def _send_time(moment: str, today: date, profile: ClinicProfile) -> Sql:
    """sendwindow.fit's send time for `moment` (an SQL timestamp): for each day around
    `today`, its window (opens, closes; NULL on a closed day) and the next opening after it."""
    rows, params = [], []
    for offset in WINDOW_DAYS:
        day = today + timedelta(days=offset)
        starts, ends = day_bounds(day)
        opens = closes = None
        if is_open_day(day, profile):
            opens = at_local(day, profile.send_window_start)
            closes = at_local(day, profile.send_window_end)
        after = next_send_time(closes or starts, profile)
        rows.append(f"({', '.join(['%s::timestamptz'] * 5)})")
        params += [starts, ends, opens, closes, after]
    return (
        f"(SELECT CASE WHEN {moment} < w.opens THEN w.opens WHEN {moment} < w.closes"  # noqa: S608
        f" THEN {moment} ELSE w.after END FROM (VALUES {', '.join(rows)})"
        f" AS w(starts, ends, opens, closes, after)"
        f" WHERE {moment} >= w.starts AND {moment} < w.ends)",
        params,
    )


def _has_template(rule: Rule, has_template: HasTemplate) -> Sql:
    """The row `g` has a template for its channel in its patient's language (planner._template,
    asked in Python of each channel of the rule and each language, '' for any other)."""
    pairs = [
        f"{channel}:{language}"
        for channel in rule.channel_order
        for language in [*Language.values, ""]
        if has_template(channel, language)
    ]
    return (
        "(g._channel || ':' || CASE WHEN g.language = ANY(%s) THEN g.language ELSE '' END)"
        " = ANY(%s::text[])",
        [Language.values, pairs],
    )


def _latest_birth(age: int, today: date) -> date:
    """The last birth date of someone at least `age` years old on `today` (age_on's sense)."""
    leap_day = (today.month, today.day) == (2, 29)
    born = date(today.year - age, today.month, 28 if leap_day else today.day)
    while age_on(born + timedelta(days=1), today) >= age:
        born += timedelta(days=1)
    while age_on(born, today) < age:
        born -= timedelta(days=1)
    return born


def _outside_audience(rule: Rule, fields: tuple[str, ...], today: date) -> Sql:
    """policy.outside_audience as SQL over the row `g`."""
    tests: list[str] = []
    params: list[Any] = []
    if rule.sexes:
        tests.append("NOT COALESCE(g.patient_sex = ANY(%s::text[]), false)")
        params.append(list(rule.sexes))
    if rule.min_age is not None or rule.max_age is not None:
        tests.append("g.birth IS NULL")
        if rule.min_age is not None:
            tests.append("g.birth > %s::date")
            params.append(_latest_birth(rule.min_age, today))
        if rule.max_age is not None:
            tests.append("g.birth <= %s::date")
            params.append(_latest_birth(rule.max_age + 1, today))
    if rule.conditions.exists():  # due_annotations' in_conditions
        tests.append("NOT g.in_conditions")
    if rule.departments:
        if "visit_department" in fields:
            tests.append("NOT COALESCE(g.visit_department = ANY(%s::text[]), false)")
            params.append(list(rule.departments))
        else:
            tests.append("true")
    return " OR ".join(tests) or "false", params


def _reason(rule: Rule, fields: tuple[str, ...], has_template: HasTemplate, now: datetime) -> Sql:
    """Why the occurrence `g` is skipped, as plan_decision decides, in its order; NULL when it
    is queued. Then the template check of planner.outbox_rows."""
    whens: list[Sql] = [("WHEN g.erased THEN %s", [SkipReason.ERASED])]
    if limits_audience(rule) or rule.conditions.exists():
        test, params = _outside_audience(rule, fields, timezone.localdate(now))
        whens.append((f"WHEN {test} THEN %s", [*params, SkipReason.OUTSIDE_AUDIENCE]))
    if rule.asks_confirmation and "appointment_status" in fields:
        whens.append(
            (
                "WHEN g.appointment_status = %s THEN %s",
                [Appointment.Status.CONFIRMED, SkipReason.ALREADY_CONFIRMED],
            )
        )
    if rule.purpose == Purpose.RELATIONSHIP:
        whens.append(
            (
                "WHEN COALESCE(g.recent_relationship, 0) >= %s THEN %s",
                [settings.RELATIONSHIP_MESSAGES_PER_30_DAYS, SkipReason.FREQUENCY_CAP],
            )
        )
    no_channel, params = _no_channel(rule)
    whens.append((f"WHEN g._channel IS NULL THEN {no_channel}", params))
    whens.append(("WHEN g._no_open_day THEN %s", [SkipReason.NO_OPEN_DAY]))
    whens.append(("WHEN g._send >= g._expires THEN %s", [SkipReason.STALE]))
    if rule.holdout_percent > 0:
        whens.append(
            ("WHEN g.holdout_bucket < %s THEN %s", [rule.holdout_percent, SkipReason.HOLDOUT])
        )
    test, params = _has_template(rule, has_template)
    whens.append((f"WHEN NOT {test} THEN %s", [*params, SkipReason.NO_TEMPLATE]))
    return (
        f"(CASE {' '.join(sql for sql, _params in whens)} END)",
        [param for _sql, params in whens for param in params],
    )


def _no_channel(rule: Rule) -> Sql:
    """consent.selectors.choose_channel's reason when no configured channel is usable, or
    channel_not_configured when one that is not configured here would be (pick_channel)."""
    configured = [channel for channel in rule.channel_order if channel_configured(channel)]

    def any_of(test: str, channels: list[str]) -> str:
        return " OR ".join(test.format(c=c) for c in channels) or "false"

    usable = any_of("COALESCE(g.{c}_granted AND g.{c}_address, false)", list(rule.channel_order))
    return (
        f"(CASE WHEN {usable} THEN %s"
        f" WHEN {any_of('g.{c}_granted', configured)} THEN %s"
        f" WHEN {any_of('g.{c}_withdrawn', configured)} THEN %s ELSE %s END)",
        [
            SkipReason.CHANNEL_NOT_CONFIGURED,
            SkipReason.NO_CONTACT_POINT,
            SkipReason.WITHDRAWN,
            SkipReason.NO_CONSENT,
        ],
    )


def _channels_left(rule: Rule, later: Later) -> Sql:
    """The `channels_left` of each combination of the patient's preferred channel, the chosen
    channel and the patient's language, as planner.outbox_rows makes them (`later`): a table
    to join, `cl`, on the row's values (a preferred channel not the rule's, or a language
    without templates, as ''). A row it would miss gets NULL, which the outbox refuses."""
    configured = [channel for channel in rule.channel_order if channel_configured(channel)]
    combinations = [
        (preferred, channel, language, json.dumps(later(preferred, channel, language)))
        for preferred in [*rule.channel_order, ""]
        for channel in configured
        for language in [*Language.values, ""]
    ]
    if not combinations:  # no channel of the rule is configured here: nothing is queued
        return " LEFT JOIN (SELECT '[]'::jsonb AS channels_left) AS cl ON true", []
    values = ", ".join(["(%s, %s, %s, %s::jsonb)"] * len(combinations))
    return (
        f" LEFT JOIN (VALUES {values}) AS cl(preferred, channel, language, channels_left)"
        " ON cl.channel = h._channel"
        " AND cl.preferred = CASE WHEN h.preferred = ANY(%s) THEN h.preferred ELSE '' END"
        " AND cl.language = CASE WHEN h.language = ANY(%s) THEN h.language ELSE '' END",
        [*(x for row in combinations for x in row), list(rule.channel_order), Language.values],
    )


def _insert_messages(rule: Rule, later: Later, refs: dict[str, Sql]) -> Sql:
    """queued AS (INSERT INTO the outbox …): the occurrences of `h` without a reason, every
    other column at its field's default."""
    values: dict[str, Sql] = {
        "uuid": ("gen_random_uuid()", []),
        "rule_id": ("%s", [rule.pk]),
        "patient_id": ("h.pid", []),
        "occurrence_key": ("h._key", []),
        "purpose": ("%s", [rule.purpose]),
        "channel": ("h._channel", []),
        "channels_left": ("cl.channels_left", []),
        "status": ("%s", [Status.QUEUED]),
        "priority": ("%s", [rule.priority]),
        "due_at": ("h._send", []),
        "next_attempt_at": ("h._send", []),
        "expires_at": ("h._expires", []),
        "anchor_at": ("h._anchor", []),
        **{f"{name}": (f"h._ref_{name}", []) for name in refs},
    }
    for column, default in default_values(OutboxMessage, list(values)).items():
        values[column] = ("%s", [default])
    columns = ", ".join(connection.ops.quote_name(column) for column in values)
    select = ", ".join(sql for sql, _params in values.values())
    join, join_params = _channels_left(rule, later)
    return (
        f"queued AS (INSERT INTO reminders_outboxmessage ({columns}) SELECT {select} FROM h"  # noqa: S608
        f"{join} WHERE h._reason IS NULL"
        " ON CONFLICT (rule_id, patient_id, occurrence_key) DO NOTHING RETURNING 1)",
        [param for _sql, params in values.values() for param in params] + join_params,
    )
