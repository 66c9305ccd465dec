"""How long seeding takes on PostgreSQL, and how much memory it needs.

    .venv/bin/python bench/seed_demo.py [--patients 100000] [--seed 1]

Drops and recreates the benchmark database (BENCH_DATABASE_URL, by default clinic_crm_bench on
the local server), migrates it, then runs `manage.py seed_demo` as a child process and records
its wall time, its peak resident memory and the rows it wrote in bench/results/seed_demo.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "seed_demo.json"
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/clinic_crm_bench"
TABLES = [
    "patients_patient",
    "patients_patient_conditions",
    "patients_visit",
    "patients_prescription",
    "patients_refillwindow",
    "patients_procedure",
    "patients_appointment",
    "consent_consententry",
    "consent_consentstate",
]
# What the planner will find due on the day of the run, to show the data exercises it.
DUE_QUERIES = {
    "birthdays_today": "SELECT count(*) FROM patients_patient WHERE birth_mmdd = %(mmdd)s",
    "appointments_tomorrow": """
        SELECT count(*) FROM patients_appointment
        WHERE (starts_at AT TIME ZONE %(zone)s)::date = %(tomorrow)s
          AND status IN ('booked', 'confirmed')""",
    "appointments_in_7_days": """
        SELECT count(*) FROM patients_appointment
        WHERE (starts_at AT TIME ZONE %(zone)s)::date = %(week)s
          AND status IN ('booked', 'confirmed')""",
    "discharged_yesterday": """
        SELECT count(*) FROM patients_procedure
        WHERE (discharged_at AT TIME ZONE %(zone)s)::date = %(yesterday)s""",
    "refill_windows_open_not_picked_up": """
        SELECT count(*) FROM patients_refillwindow
        WHERE opens_on <= %(today)s AND closes_on >= %(today)s AND picked_up_on IS NULL""",
    "granted_care_sms": """
        SELECT count(*) FROM consent_consentstate
        WHERE purpose = 'care' AND channel = 'sms' AND granted""",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    name = urlsplit(url).path.lstrip("/")
    # The database is dropped: refuse anything not plainly a benchmark database.
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to drop {name!r}: the benchmark database must end in _bench")

    recreate(url)
    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    migrate_seconds, _rss, _out = run_measured([*manage, "migrate", "--verbosity", "0"], env)
    seed_args = ["seed_demo", "--patients", str(args.patients), "--seed", str(args.seed)]
    seconds, peak_kib, output = run_measured([*manage, *seed_args], env)

    with psycopg.connect(url) as conn:
        rows = {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()[0]
            for table in TABLES
        }
        zone = os.environ.get("TIME_ZONE", "Asia/Taipei")
        today = datetime.now(ZoneInfo(zone)).date()
        params = {
            "zone": zone,
            "today": today,
            "mmdd": today.month * 100 + today.day,
            "tomorrow": today + timedelta(days=1),
            "week": today + timedelta(days=7),
            "yesterday": today - timedelta(days=1),
        }
        due = {key: conn.execute(query, params).fetchone()[0] for key, query in DUE_QUERIES.items()}
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        server = conn.execute("SHOW server_version").fetchone()[0]

    result = {
        "benchmark": "seed_demo",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "manage.py " + " ".join(seed_args),
        "patients": args.patients,
        "seed_seconds": round(seconds, 2),
        "patients_per_second": round(args.patients / seconds),
        # ru_maxrss is in KiB on Linux.
        "seed_peak_rss_mib": round(peak_kib / 1024, 1),
        "migrate_seconds": round(migrate_seconds, 2),
        "rows": rows,
        "rows_total": sum(rows.values()),
        "due_on_run_day": due,
        "database_size_mib": round(size / 2**20, 1),
        "summary": output.strip(),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server,
            "platform": platform.platform(),
            "debug": os.environ.get("DEBUG", "(default: on)"),
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    partial = RESULT.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(RESULT)
    print(json.dumps(result, indent=2, ensure_ascii=False))


def recreate(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run `command`; return its wall time, its own peak RSS in KiB and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)  # noqa: S603
    output = process.stdout.read()
    # wait4 gives this child's own usage; RUSAGE_CHILDREN would be the maximum over every
    # child so far, migrate included.
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode:
        raise SystemExit(f"{' '.join(command[1:])} failed with exit code {process.returncode}")
    return seconds, usage.ru_maxrss, output


if __name__ == "__main__":
    main()
