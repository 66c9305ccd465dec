"""How long the patient search takes at 100,000 patients on PostgreSQL, for each kind of term.

    .venv/bin/python bench/search.py [--patients 100000] [--seed 1] [--reuse] [--runs 5]

Recreates the benchmark database (BENCH_SEARCH_DATABASE_URL, by default clinic_crm_search_bench),
migrates and seeds it with `manage.py seed_demo`, or with --reuse migrates what is there (the
migration fills the newer blind indexes). Then, for each kind of term the front desk types
(chart-number prefix, full name, phone as written on a form, last four digits of the phone
with an ROC birth date, national ID), it searches through patients.selectors.patient_search as
the admin does (the count and the first page of 100) for --runs different patients, and records
the median wall time, whether every search found its patient, and PostgreSQL's plan (no
sequential scan on the patient table) in bench/results/search.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_demo import ROOT, recreate, run_measured  # noqa: E402

RESULT = ROOT / "bench" / "results" / "search.json"
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/clinic_crm_search_bench"
TARGET_MS = 300.0
PAGE = 100  # the admin's list shows a page of rows and counts them all


def _roc(day) -> str:
    return f"{day.year - 1911}/{day.month:02d}/{day.day:02d}"


def _spelled_phone(e164: str) -> str:
    if not e164.startswith("+886"):
        return e164
    national = "0" + e164.removeprefix("+886")
    return f"{national[:4]}-{national[4:7]}-{national[7:]}"


# Each kind: how a clerk would type the term for a patient (name, phone, ... decrypted here).
KINDS = {
    "chart_prefix": lambda p: p.chart_no[:-2],  # all but the last two characters
    "full_name": lambda p: p.name,
    "phone": lambda p: _spelled_phone(p.phone),
    "phone_last4_birth_date": lambda p: f"{p.phone[-4:]} {_roc(p.birth_date)}",
    "national_id": lambda p: p.national_id.lower(),
}


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinic_crm.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def samples(runs: int) -> dict[str, list]:
    """`runs` patients for each kind, spread over the table, with the fields that kind needs."""
    from patients.models import Patient

    taiwan_mobile = Patient.objects.filter(phone_is_mobile=True, birth_date__isnull=False)
    pools = {
        "chart_prefix": Patient.objects.all(),
        "full_name": Patient.objects.all(),
        "phone": taiwan_mobile,
        "phone_last4_birth_date": taiwan_mobile,
        "national_id": Patient.objects.exclude(national_id_bidx=None),
    }
    chosen = {}
    for kind, pool in pools.items():
        ids = list(pool.order_by("pk").values_list("pk", flat=True))
        step = max(1, len(ids) // (runs + 1))
        picks = [ids[step * (i + 1)] for i in range(runs) if step * (i + 1) < len(ids)]
        chosen[kind] = list(Patient.objects.filter(pk__in=picks))
    return chosen


def search_once(term: str) -> tuple[float, int, list[int]]:
    from patients.selectors import patient_search

    started = time.perf_counter()
    found = patient_search(term)
    total = found.count()
    page = list(found.values_list("pk", flat=True)[:PAGE])
    return (time.perf_counter() - started) * 1000, total, page


def plan_of(term: str) -> str:
    from django.db import connection

    from patients.selectors import patient_search

    sql, params = patient_search(term).values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep the database if it is there")
    args = parser.parse_args()
    url = os.environ.get("BENCH_SEARCH_DATABASE_URL", DEFAULT_URL)
    name = urlsplit(url).path.lstrip("/")
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to use {name!r}: the benchmark database must end in _bench")

    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    seed_seconds = None
    if not args.reuse:
        recreate(url)
    run_measured([*manage, "migrate", "--verbosity", "0"], env)
    with psycopg.connect(url) as conn:
        patients = conn.execute("SELECT count(*) FROM patients_patient").fetchone()[0]
    if patients == 0:
        seed_args = ["seed_demo", "--patients", str(args.patients), "--seed", str(args.seed)]
        seed_seconds, _rss, _out = run_measured([*manage, *seed_args], env)
        with psycopg.connect(url) as conn:
            patients = conn.execute("SELECT count(*) FROM patients_patient").fetchone()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE patients_patient")

    setup_django(url)
    kinds = {}
    for kind, patients_of_kind in samples(args.runs).items():
        timings, missed, totals = [], 0, []
        terms = [KINDS[kind](patient) for patient in patients_of_kind]
        search_once(terms[0])  # warm the connection and the plan cache, not timed
        for patient, term in zip(patients_of_kind, terms, strict=True):
            ms, total, page = search_once(term)
            timings.append(ms)
            totals.append(total)
            missed += patient.pk not in page
        plan = plan_of(terms[0])
        kinds[kind] = {
            "median_ms": round(statistics.median(timings), 2),
            "runs_ms": [round(ms, 2) for ms in timings],
            "results": totals,
            "all_found": missed == 0,
            "sequential_scan": "Seq Scan on patients_patient" in plan,
        }

    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        # What the (last four digits, birth date) index tells apart: patients whose pair is
        # shared with someone else are listed together and told apart by the clerk.
        indexed, sharing = conn.execute(
            """SELECT coalesce(sum(n), 0)::int, coalesce(sum(n) FILTER (WHERE n > 1), 0)::int FROM (
                 SELECT count(*) AS n FROM patients_patient
                 WHERE phone4_birth_bidx IS NOT NULL GROUP BY phone4_birth_bidx) pairs"""
        ).fetchone()
    within = all(
        k["median_ms"] < TARGET_MS and k["all_found"] and not k["sequential_scan"]
        for k in kinds.values()
    )
    result = {
        "benchmark": "search",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "patients.selectors.patient_search(term): count() and the first 100 ids",
        "patients": patients,
        "seed_seconds": round(seed_seconds, 2) if seed_seconds is not None else None,
        "runs": args.runs,
        "target_ms": TARGET_MS,
        "kinds": kinds,
        "within_targets": within,
        "phone4_birth_index": {"patients_indexed": indexed, "patients_sharing_a_pair": sharing},
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server,
            "platform": platform.platform(),
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    partial = RESULT.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(RESULT)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
