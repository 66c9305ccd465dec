"""How long one planning pass takes on PostgreSQL, against a hand-written SQL floor.

    .venv/bin/python bench/planner.py [--patients 100000] [--seed 1] [--reuse] [--runs 3]

Recreates the benchmark database (BENCH_PLANNER_DATABASE_URL, by default clinic_crm_plan_bench),
migrates and seeds it, or with --reuse keeps what is there. Then, for today at 08:00 in the
clinic's zone: `manage.py run_rules --at ...` as a child process on an empty outbox, --runs times
(the median of the planning pass as the command times it, and peak RSS; the process's own wall
time is reported beside it), and for each enabled rule one hand-written SELECT returning the
same due rows with consent joined, timed with psycopg. Results go to
bench/results/planner_<N/1000>k.json (planner_100k.json, planner_1000k.json).
"""

import argparse
import calendar
import json
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_demo import ROOT, recreate, run_measured  # noqa: E402

RESULTS = ROOT / "bench" / "results"  # planner_<patients in thousands>k.json
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/clinic_crm_plan_bench"
RESET = "TRUNCATE reminders_outboxmessage, campaigns_skip, reminders_stafftask CASCADE"
ADDRESS = {"sms": "phone_bidx", "line": "line_user_id_bidx", "email": "email_bidx"}
TARGETS = {"ratio": 3.0, "seconds": 10.0, "rss_mib": 300.0}

# --- the floor: one SELECT per rule kind --------------------------------------------------------
# Each FROM clause names the patient `p`; `consent` adds one LEFT JOIN per channel of the rule
# (consent_state is unique per patient x purpose x channel) plus the contact-point columns.
KIND_SQL = {
    "birthday": """
        SELECT p.id, p.birth_mmdd {cols} FROM patients_patient p {joins}
        WHERE p.birth_mmdd = ANY(%(mmdd)s) AND p.birth_date IS NOT NULL""",
    "postop": """
        SELECT p.id, x.discharged_at {cols} FROM patients_procedure x
        JOIN patients_patient p ON p.id = x.patient_id {joins}
        WHERE ({day_ranges})""",
    "dose": """
        SELECT p.id, x.start_date {cols} FROM patients_prescription x
        JOIN patients_patient p ON p.id = x.patient_id {joins}
        WHERE x.dose_reminders AND x.frequency <> 'PRN'
          AND x.start_date <= %(today)s + 1 AND x.start_date > %(today)s - 90""",
    "refill_opens": """
        SELECT p.id, w.opens_on {cols} FROM patients_refillwindow w
        JOIN patients_prescription x ON x.id = w.prescription_id AND x.refill_reminders
        JOIN patients_patient p ON p.id = x.patient_id {joins}
        WHERE w.opens_on = ANY(%(days)s) AND w.picked_up_on IS NULL""",
    "refill_closes": """
        SELECT p.id, w.closes_on {cols} FROM patients_refillwindow w
        JOIN patients_prescription x ON x.id = w.prescription_id AND x.refill_reminders
        JOIN patients_patient p ON p.id = x.patient_id {joins}
        WHERE w.closes_on = ANY(%(days)s) AND w.picked_up_on IS NULL""",
    "appointment": """
        SELECT p.id, x.starts_at, x.status, x.department {cols} FROM patients_appointment x
        JOIN patients_patient p ON p.id = x.patient_id {joins}
        WHERE ({day_ranges}) AND x.status IN ('booked', 'confirmed')""",
    # The last visit falls in the recall window: a visit then, and none since. The shipped
    # recall rule names no conditions, so any chronic condition will do.
    "recall": """
        SELECT p.id, v.visited_on, v.department {cols} FROM (
            SELECT DISTINCT ON (patient_id) patient_id, visited_on, department
            FROM patients_visit WHERE visited_on >= %(earliest)s
            ORDER BY patient_id, visited_on DESC, id DESC) v
        JOIN patients_patient p ON p.id = v.patient_id {joins}
        WHERE v.visited_on <= %(latest)s
          AND EXISTS (SELECT 1 FROM patients_patient_conditions c WHERE c.patient_id = p.id)
          AND NOT EXISTS (SELECT 1 FROM patients_appointment a WHERE a.patient_id = p.id
                          AND a.starts_at >= %(now)s AND a.status IN ('booked', 'confirmed'))""",
}
# Birthday and other relationship rules also need each patient's messages of the last 30 days.
RECENT_RELATIONSHIP = """LEFT JOIN LATERAL (SELECT count(*) AS n FROM reminders_outboxmessage m
    WHERE m.patient_id = p.id AND m.purpose = 'relationship' AND m.due_at >= %(cap_from)s
      AND m.status IN ('queued', 'sending', 'sent', 'delivered', 'unknown')) recent ON true"""


def floor_sql(rule: dict, now: datetime) -> tuple[str, dict]:
    """The hand-written SELECT for `rule` at `now`, and its parameters."""
    zone = now.tzinfo
    today = now.date()
    offsets = rule["offsets"]
    joins, cols = [], ["p.erased_at IS NOT NULL", "p.birth_date", "p.sex", "p.preferred_channel"]
    for ch in rule["channel_order"]:
        joins.append(
            f"LEFT JOIN consent_consentstate c_{ch} ON c_{ch}.patient_id = p.id"
            f" AND c_{ch}.purpose = %(purpose)s AND c_{ch}.channel = '{ch}'"
        )
        cols += [f"c_{ch}.granted", f"p.{ADDRESS[ch]} IS NOT NULL"]
    if rule["purpose"] == "relationship":
        joins.append(RECENT_RELATIONSHIP)
        cols.append("recent.n")
    days = [today - timedelta(days=o) for o in offsets]
    params = {"purpose": rule["purpose"], "today": today, "days": days, "now": now}
    params["cap_from"] = now - timedelta(days=30)
    ranges = []
    for n, day in enumerate(days):
        params[f"from{n}"] = datetime.combine(day, clock.min, zone)
        params[f"to{n}"] = datetime.combine(day + timedelta(days=1), clock.min, zone)
        column = "discharged_at" if rule["kind"] == "postop" else "starts_at"
        ranges.append(f"(x.{column} >= %(from{n})s AND x.{column} < %(to{n})s)")
    mmdd = [d.month * 100 + d.day for d in days]
    if any((d.month, d.day) == (2, 28) and not calendar.isleap(d.year) for d in days):
        mmdd.append(229)  # born on Feb 29: greeted on Feb 28 in common years
    params["mmdd"] = mmdd
    latest = today - timedelta(days=max(offsets))
    params |= {"latest": latest, "earliest": latest - timedelta(days=7)}
    text = KIND_SQL[rule["kind"]].format(
        cols="".join(f", {c}" for c in cols), joins="\n".join(joins), day_ranges=" OR ".join(ranges)
    )
    return text, params


def time_floor(url: str, rules: list[dict], now: datetime, runs: int) -> dict:
    """Per rule: median seconds and row count of its hand-written SELECT."""
    out = {}
    with psycopg.connect(url) as conn:
        for rule in rules:
            text, params = floor_sql(rule, now)
            timings, count = [], None
            for _ in range(runs):
                started = time.perf_counter()
                count = len(conn.execute(text, params).fetchall())
                timings.append(time.perf_counter() - started)
            out[rule["name"]] = {"seconds": statistics.median(timings), "rows": count}
    return out


def planner_due_sets(url: str, now: datetime, runs: int) -> tuple[list[dict], dict]:
    """The enabled rules, and per rule the planner's own due_set query, run in-process: its
    row count, the dues it expands to, and the median time to fetch it."""
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinic_crm.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from campaigns.models import Rule
    from campaigns.planner import due_set
    from patients.models import ClinicProfile

    profile = ClinicProfile.load()
    rules, sizes = [], {}
    for rule in Rule.objects.filter(enabled=True).prefetch_related("conditions"):
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            query, selection = due_set(rule, now=now, profile=profile)
            rows = list(query)
            timings.append(time.perf_counter() - started)
        sizes[rule.name] = {
            "rows": len(rows),
            "dues": sum(1 for row in rows for _due in selection.expand(row)),
            "seconds": statistics.median(timings),
        }
        fields = ("name", "kind", "purpose", "offsets", "channel_order")
        rules.append({f: getattr(rule, f) for f in fields})
    return rules, sizes


def parse_summary(output: str) -> tuple[int, Counter]:
    """Messages queued and skips by reason, from run_rules' per-rule lines."""
    queued, skipped = 0, Counter()
    for line in output.splitlines():
        if match := re.search(r": queued (\d+); skipped: (.*)$", line):
            queued += int(match[1])
            for part in match[2].split(", "):
                reason, _, n = part.rpartition(" ")
                if reason:
                    skipped[reason] += int(n)
    return queued, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep the seeded database")
    args = parser.parse_args()
    result_file = RESULTS / f"planner_{args.patients // 1000}k.json"
    url = os.environ.get("BENCH_PLANNER_DATABASE_URL", DEFAULT_URL)
    name = urlsplit(url).path.lstrip("/")
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to use {name!r}: the benchmark database must end in _bench")

    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    seed_seconds = None
    if not args.reuse:
        recreate(url)
        run_measured([*manage, "migrate", "--verbosity", "0"], env)
        seed = ["seed_demo", "--patients", str(args.patients), "--seed", str(args.seed)]
        seed_seconds, _rss, _out = run_measured([*manage, *seed], env)
    zone = ZoneInfo(os.environ.get("TIME_ZONE", "Asia/Taipei"))
    now = datetime.combine(datetime.now(zone).date(), clock(8, 0), zone)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # both sides get the same fresh statistics

    runs = []
    for _ in range(args.runs):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RESET)
            # Each run from the same state: a pass writes about 150 MB of WAL at 1 M patients,
            # and a checkpoint an earlier run (or the seeding) set off would otherwise be
            # writing in the background of this one, or of the floor below, by chance.
            conn.execute("CHECKPOINT")
        command = [*manage, "run_rules", "--at", now.replace(tzinfo=None).isoformat()]
        seconds, peak_kib, output = run_measured(command, env)
        # The pass itself, as run_rules times it: the process's start (Python, Django, its
        # checks: about a second) is not planning, and the worker plans in a running process.
        passed = re.search(r"messages queued in ([\d.]+) s", output)
        runs.append(
            {
                "seconds": float(passed[1]) if passed else seconds,
                "process_seconds": seconds,
                "rss_mib": peak_kib / 1024,
                "output": output,
            }
        )
    queued, skipped = parse_summary(runs[-1]["output"])

    # Due sets and the floor both read an empty outbox, as the timed runs did.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RESET)
        conn.execute("CHECKPOINT")
    rules, due_sets = planner_due_sets(url, now, args.runs)
    floor = time_floor(url, rules, now, args.runs)
    planner_seconds = statistics.median(r["seconds"] for r in runs)
    sql_seconds = sum(f["seconds"] for f in floor.values())
    select_seconds = sum(d["seconds"] for d in due_sets.values())
    rss = statistics.median(r["rss_mib"] for r in runs)
    per_rule = {
        rule: {
            "planner_due_rows": due_sets[rule]["rows"],
            "planner_dues_expanded": due_sets[rule]["dues"],
            "planner_select_seconds": round(due_sets[rule]["seconds"], 4),
            "sql_rows": floor[rule]["rows"],
            "sql_seconds": round(floor[rule]["seconds"], 4),
        }
        for rule in due_sets
    }
    mismatched = [r for r, v in per_rule.items() if v["planner_due_rows"] != v["sql_rows"]]
    with psycopg.connect(url) as conn:
        patients = conn.execute("SELECT count(*) FROM patients_patient").fetchone()[0]
        info = {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": conn.execute("SHOW server_version").fetchone()[0],
            "platform": platform.platform(),
            "debug": os.environ.get("DEBUG", "(default: on)"),
        }

    result = {
        "benchmark": "planner",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "manage.py run_rules --at " + now.replace(tzinfo=None).isoformat(),
        "planned_for": now.isoformat(),
        "patients": patients,
        "seed_seconds": round(seed_seconds, 2) if seed_seconds else "(reused database)",
        "planner_seconds": round(planner_seconds, 2),
        "planner_runs_seconds": [round(r["seconds"], 2) for r in runs],
        "process_seconds": [round(r["process_seconds"], 2) for r in runs],
        "planner_peak_rss_mib": round(rss, 1),
        "sql_floor_seconds": round(sql_seconds, 3),
        "ratio": round(planner_seconds / sql_seconds, 1),
        # The planner's due_set queries fetched into Python, as the Python walk (SQLite, dry
        # runs) reads them, against the same floor. On PostgreSQL a pass never fetches them:
        # each rule is one statement that selects, decides and writes (campaigns.plan_sql).
        "planner_select_seconds": round(select_seconds, 3),
        "select_ratio": round(select_seconds / sql_seconds, 1),
        "targets": TARGETS,
        "within_targets": planner_seconds <= TARGETS["ratio"] * sql_seconds
        and planner_seconds < TARGETS["seconds"]
        and rss < TARGETS["rss_mib"],
        "queued": queued,
        "skipped": dict(skipped.most_common()),
        "rules": per_rule,
        "row_counts_match": not mismatched,
        "summary": runs[-1]["output"].strip(),
        "machine": info,
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(result["summary"])
    print(
        f"\nplanning pass {planner_seconds:.2f} s (median of {args.runs}; the run_rules process "
        f"{statistics.median(r['process_seconds'] for r in runs):.2f} s), peak RSS {rss:.0f} MiB; "
        f"hand-written SQL {sql_seconds:.3f} s; ratio {result['ratio']}x; queued {queued}"
    )
    print(
        f"the due sets fetched into Python, as the Python walk reads them: {select_seconds:.3f} s"
        f" = {result['select_ratio']}x the SQL (a pass on PostgreSQL fetches none: one"
        " statement a rule selects, decides and writes)"
    )
    print(
        "due rows planner/sql: "
        + ", ".join(f"{v['planner_due_rows']}/{v['sql_rows']}" for v in per_rule.values())
    )
    if mismatched:
        print(f"ROW COUNTS DIFFER for: {', '.join(mismatched)}")
    print(f"targets met: {result['within_targets']}  ->  {result_file.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
