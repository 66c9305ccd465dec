"""How fast the manager's dashboard and the week-ahead forecast are, at 100,000 patients and
1,000,000 outbox rows on PostgreSQL. (Not bench/dashboard.py: run as a script, its folder
comes first on the path and that name would shadow the dashboard app.)

    .venv/bin/python bench/dashboard_pages.py [--patients 100000] [--messages 1000000] [--runs 5]
                                        [--reuse] [--keep]

Recreates its own database (BENCH_DASHBOARD_DATABASE_URL, by default dashboard_bench), migrates
it and runs `seed_demo --patients N` (patients, records, consent, the shipped rules); then adds
--messages outbox rows in SQL (INSERT … SELECT generate_series: a few minutes at most) spread
over the last 120 days and the next 7, in every status, on every rule and channel, 40 % of them
about a seeded appointment, with an attempt for each message handed to a provider and a skip
for every fourth occurrence. --reuse keeps a database this script already filled; --keep
leaves it afterwards (otherwise it is dropped).

Then, in this process with Django's test Client logged in as a clinic manager: the dashboard
for the last 90 days (median of --runs after one warm-up), the same page with each filter
changed (rule, channel, department, doctor; median of --runs each), and
campaigns.forecast.week_ahead (median of 3) plus the page's week-ahead fragment. Targets: 1 s
for each page, 5 s for the forecast. Before timing it runs `manage.py dashboard_refresh` (the
worker's nightly count of the dashboard's summary; timed). Results go to
bench/results/dashboard.json; a page that answers 404 is "missing", any other failure an
"error"; neither is within target.
"""

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_demo import ROOT, recreate, run_measured  # noqa: E402

RESULT = ROOT / "bench" / "results" / "dashboard.json"
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/dashboard_bench"
PAGE_TARGET_MS = 1000.0
FORECAST_TARGET_S = 5.0
USERNAME = "bench-manager"
MARK = "bench:"  # the occurrence keys of the bench's own messages and skips

# Statuses by share, in per mille. Queued messages are due in the coming week, the rest in
# the last 120 days.
STATUSES = [
    ("delivered", 560),
    ("sent", 150),
    ("failed", 80),
    ("dropped", 60),
    ("unknown", 20),
    ("queued", 130),
]
CHANNELS = ["sms", "sms", "line", "line", "email"]  # sms 40 %, line 40 %, e-mail 20 %
SKIP_REASONS = [
    "no_consent",
    "withdrawn",
    "no_contact_point",
    "outside_audience",
    "frequency_cap",
    "already_confirmed",
    "stale",
    "holdout",
]


def status_case() -> str:
    """SQL: the status of message number g, by the shares in STATUSES."""
    whens, upto = [], 0
    for status, share in STATUSES[:-1]:
        upto += share
        whens.append(f"WHEN g % 1000 < {upto} THEN '{status}'")
    return f"CASE {' '.join(whens)} ELSE '{STATUSES[-1][0]}' END"


def seed_messages(url: str, *, messages: int) -> dict[str, float | int]:
    """The bench's outbox rows, attempts and skips, written by the database itself."""
    started = time.perf_counter()
    channels = "ARRAY[" + ",".join(f"'{c}'" for c in CHANNELS) + "]"
    reasons = "ARRAY[" + ",".join(f"'{r}'" for r in SKIP_REASONS) + "]"
    linked = int(messages * 0.4)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        # The rules, the patients and the appointments, numbered, to pick from by g.
        conn.execute(
            "CREATE TEMP TABLE r AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, "
            "kind, purpose FROM campaigns_rule"
        )
        conn.execute(
            "CREATE TEMP TABLE p AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id "
            "FROM patients_patient"
        )
        conn.execute(
            "CREATE TEMP TABLE a AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, "
            "patient_id FROM patients_appointment"
        )
        for table in ("r", "p", "a"):
            conn.execute(f"CREATE UNIQUE INDEX ON {table} (n)")  # noqa: S608 - our own names
            conn.execute(f"ANALYZE {table}")
        rules = conn.execute("SELECT count(*) FROM r").fetchone()[0]
        patients = conn.execute("SELECT count(*) FROM p").fetchone()[0]
        appointments = conn.execute("SELECT count(*) FROM a").fetchone()[0]
        appointment_rules = conn.execute(
            "SELECT array_agg(id ORDER BY id) FROM r WHERE kind = 'appointment'"
        ).fetchone()[0]
        n_appointment_rules = len(appointment_rules)
        # When: queued ones within the coming week, the others within the last 120 days,
        # spread by a multiplicative hash of g so that neighbours are not in step.
        when = (
            "CASE WHEN {status} = 'queued' "
            "THEN now() + ((g * 7919) % (7 * 86400)) * interval '1 second' "
            "ELSE now() - ((g * 104729) % (120 * 86400)) * interval '1 second' END"
        )
        columns = (
            "uuid, rule_id, patient_id, appointment_id, occurrence_key, purpose, channel, "
            "channels_left, status, priority, due_at, next_attempt_at, expires_at, "
            "attempts, claim, provider_id, error, subject, body, created_at, sent_at, "
            "delivered_at, replied_at, segments, country"
        )
        select = """
            SELECT gen_random_uuid(), {rule}, {patient}, {appointment}, '{mark}' || g,
                   {purpose}, {channel}, '[]'::jsonb, s.status, 50,
                   s.due, s.due, s.due + interval '2 days',
                   CASE WHEN s.status IN ('queued', 'dropped') THEN 0 ELSE 1 END, '', '', '',
                   '', '', s.due,
                   CASE WHEN s.status IN ('delivered', 'sent', 'unknown') THEN s.due END,
                   CASE WHEN s.status = 'delivered' THEN s.due + interval '1 minute' END,
                   CASE WHEN s.status = 'delivered' AND g % 5 = 0
                        THEN s.due + interval '1 hour' END,
                   CASE WHEN {channel} = 'sms' THEN 1 + g % 3 ELSE 1 END,
                   CASE WHEN {channel} = 'sms' THEN 'TW' ELSE '' END
            FROM generate_series({first}::bigint, {last}::bigint) AS g
            CROSS JOIN LATERAL (SELECT {status_case} AS status) AS st
            CROSS JOIN LATERAL (SELECT st.status, {when} AS due) AS s
            {joins}
        """
        status_sql = status_case()
        common = {
            "mark": MARK,
            "channel": f"({channels})[(1 + g % {len(CHANNELS)})::int]",
            "status_case": status_sql,
            "when": when.format(status="st.status"),
        }
        # 40 %: appointment reminders, each about a seeded appointment of its own patient.
        conn.execute(
            f"INSERT INTO reminders_outboxmessage ({columns}) "  # noqa: S608 - our own SQL
            + select.format(
                **common,
                rule=f"(ARRAY{appointment_rules}::bigint[])[(1 + g % {n_appointment_rules})::int]",
                patient="a.patient_id",
                appointment="a.id",
                purpose="'care'",
                first=1,
                last=linked,
                joins=f"JOIN a ON a.n = (g * 7) % {appointments}",
            )
            + " ON CONFLICT DO NOTHING"
        )
        # The rest: every rule, random patients.
        conn.execute(
            f"INSERT INTO reminders_outboxmessage ({columns}) "  # noqa: S608 - our own SQL
            + select.format(
                **common,
                rule="r.id",
                patient="p.id",
                appointment="NULL",
                purpose="r.purpose",
                first=linked + 1,
                last=messages,
                joins=f"JOIN r ON r.n = g % {rules} JOIN p ON p.n = (g * 7919) % {patients}",
            )
            + " ON CONFLICT DO NOTHING"
        )
        conn.execute(
            """INSERT INTO reminders_attempt
                   (message_id, channel, started_at, finished_at, outcome, error)
               SELECT id, channel, due_at, due_at + interval '2 seconds',
                      CASE status WHEN 'failed' THEN 'permanent'
                                  WHEN 'unknown' THEN 'unknown' ELSE 'sent' END, ''
               FROM reminders_outboxmessage
               WHERE occurrence_key LIKE 'bench:%' AND status IN
                     ('delivered', 'sent', 'failed', 'unknown')"""
        )
        conn.execute(
            f"""INSERT INTO campaigns_skip (rule_id, patient_id, occurrence_key, reason, at)
               SELECT r.id, p.id, '{MARK}skip:' || g,
                      ({reasons})[(1 + g % {len(SKIP_REASONS)})::int],
                      now() - ((g * 104729) % (120 * 86400)) * interval '1 second'
               FROM generate_series(1::bigint, {messages // 4}::bigint) AS g
               JOIN r ON r.n = g % {rules} JOIN p ON p.n = (g * 31) % {patients}
               ON CONFLICT DO NOTHING"""  # noqa: S608 - our own SQL
        )
        conn.execute("VACUUM ANALYZE")
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("reminders_outboxmessage", "reminders_attempt", "campaigns_skip")
        }
    return {"seconds": round(time.perf_counter() - started, 1), **counts}


def bench_filled(url: str, messages: int) -> bool:
    """Whether `url` is a database this script already filled with `messages` messages."""
    try:
        with psycopg.connect(url) as conn:
            if not conn.execute("SELECT to_regclass('reminders_outboxmessage')").fetchone()[0]:
                return False
            query = "SELECT count(*) FROM reminders_outboxmessage WHERE occurrence_key LIKE %s"
            return conn.execute(query, [MARK + "%"]).fetchone()[0] >= messages * 0.99
    except psycopg.OperationalError:
        return False


def drop(url: str) -> None:
    from psycopg import sql

    parts = urlsplit(url)
    name = sql.Identifier(parts.path.lstrip("/"))
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def median_ms(call, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(round((time.perf_counter() - started) * 1000, 1))
    return round(statistics.median(times), 1), times


def measure_pages(runs: int) -> dict[str, dict]:
    """The dashboard's page for the last 90 days, then with each filter changed."""
    from django.contrib.auth.models import Group, User
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from campaigns.models import Rule
    from clinic_crm.roles import CLINIC_MANAGER
    from patients.models import Appointment

    manager, _created = User.objects.get_or_create(username=USERNAME)
    manager.groups.add(Group.objects.get(name=CLINIC_MANAGER))
    client = Client()
    client.force_login(manager)
    today = timezone.localdate()
    span = {
        "range": "custom",
        "start": (today - timedelta(days=89)).isoformat(),
        "end": today.isoformat(),
    }
    busiest = Appointment.objects.order_by().values("department", "doctor")
    first = busiest.first() or {"department": "家醫科", "doctor": "王醫師"}
    rule = Rule.objects.filter(kind="appointment").order_by("pk").first()
    pages = {
        "90 days": span,
        "filter: rule": {**span, "rule": str(rule.pk if rule else "")},
        "filter: channel": {**span, "channel": "sms"},
        "filter: department": {**span, "department": first["department"]},
        "filter: doctor": {**span, "doctor": first["doctor"]},
        "week-ahead fragment": {**span},
    }
    results: dict[str, dict] = {}
    for name, params in pages.items():
        path = "/dashboard/week-ahead/" if name == "week-ahead fragment" else "/dashboard/"
        row: dict = {"url": path, "params": params}
        try:
            warm = client.get(path, params)
        except Exception as error:  # noqa: BLE001 - a page half-built by someone else
            results[name] = row | {"status": "error", "error": repr(error), "within_target": False}
            continue
        if warm.status_code != 200:
            status = "missing" if warm.status_code == 404 else "error"
            results[name] = row | {"status": status, "http": warm.status_code}
            results[name]["within_target"] = False
            continue
        queries = 0

        def count(execute, sql, params, many, context):
            nonlocal queries
            queries += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            client.get(path, params)

        def get(path=path, params=params):
            response = client.get(path, params)
            response.content  # noqa: B018 - timed to its last byte

        # The fragment runs the forecast (seconds): its own target, fewer runs.
        fragment = name == "week-ahead fragment"
        median, times = median_ms(get, 3 if fragment else runs)
        target = FORECAST_TARGET_S * 1000 if fragment else PAGE_TARGET_MS
        results[name] = row | {
            "status": "ok",
            "median_ms": median,
            "runs_ms": times,
            "queries": queries,
            "target_ms": target,
            "within_target": median < target,
        }
    return results


def measure_forecast() -> dict:
    from django.utils import timezone

    from campaigns.forecast import week_ahead

    now = timezone.now()
    total = sum(row.messages for row in week_ahead(now=now))  # warm-up, and the figure
    median, times = median_ms(lambda: week_ahead(now=now), 3)
    return {
        "median_ms": median,
        "runs_ms": times,
        "messages_next_7_days": total,
        "target_ms": FORECAST_TARGET_S * 1000,
        "within_target": median < FORECAST_TARGET_S * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="keep a database filled before")
    parser.add_argument("--keep", action="store_true", help="do not drop the database after")
    args = parser.parse_args()
    url = os.environ.get("BENCH_DASHBOARD_DATABASE_URL", DEFAULT_URL)
    if not urlsplit(url).path.lstrip("/").endswith("_bench"):
        raise SystemExit("refusing: the benchmark database's name must end in _bench")

    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    seeded: dict = {"database": "reused"}
    if not (args.reuse and bench_filled(url, args.messages)):
        print(f"seeding {args.patients} patients and {args.messages} messages (minutes)…")
        recreate(url)
        run_measured([*manage, "migrate", "--verbosity", "0"], env)
        seed_args = ["seed_demo", "--patients", str(args.patients), "--seed", str(args.seed)]
        seed_seconds, _rss, _out = run_measured([*manage, *seed_args], env)
        seeded = {
            "database": "seeded for this run",
            "seed_demo_seconds": round(seed_seconds, 1),
            "messages_sql": seed_messages(url, messages=args.messages),
        }
    else:
        run_measured([*manage, "migrate", "--verbosity", "0"], env)
    # The worker's nightly full count of the dashboard's outbox summary (dashboard.summary);
    # the page reads the days before today from it and counts today live.
    refresh_seconds, _rss, _out = run_measured([*manage, "dashboard_refresh"], env)
    seeded["summary_refresh_seconds"] = round(refresh_seconds, 1)

    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinic_crm.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    # Production renders without DEBUG (no query log); the test Client's host must be allowed.
    settings.DEBUG = False
    logging.getLogger("axes").setLevel(logging.WARNING)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]

    forecast = measure_forecast()
    pages = measure_pages(args.runs)
    within = forecast["within_target"] and all(p["within_target"] for p in pages.values())
    with psycopg.connect(url) as conn:
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in (
                "patients_patient",
                "reminders_outboxmessage",
                "reminders_attempt",
                "campaigns_skip",
            )
        }
        server = conn.execute("SHOW server_version").fetchone()[0]
    result = {
        "benchmark": "dashboard",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "what": "server-side render time, Django test Client in-process, logged in as a "
        "clinic manager; the week-ahead forecast called in-process",
        "rows": counts,
        **seeded,
        "runs": args.runs,
        "forecast": forecast,
        "pages": pages,
        "within_targets": within,
        "machine": {
            "nproc": os.cpu_count(),
            "loadavg_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "postgres": server,
            "platform": platform.platform(),
            "debug": False,
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    partial = RESULT.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(RESULT)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if not args.keep:
        from django.db import connections

        connections.close_all()
        drop(url)


if __name__ == "__main__":
    main()
