"""How fast the front desk's pages render, server-side, at 100,000 patients on PostgreSQL.

    .venv/bin/python bench/desk_pages.py [--patients 100000] [--appointments 300] [--runs 5]

Uses bench/seed_demo.py's database (BENCH_DATABASE_URL, by default clinic_crm_bench): reused when
it already holds --patients patients (migrated to the current code first), otherwise recreated,
migrated and seeded as seed_demo.py does. Then makes "today" (the clinic's zone) a day of
--appointments appointments (the bench's own rows, marked by their location, are replaced on
each run) with a reminder each in every state, a few skipped, and open call tasks; and renders
each page with Django's test Client in this process, logged in as a front-desk user: once to
warm up, then --runs times, timed. Medians go to bench/results/desk.json. A page that answers
404 is "missing" (not built yet), any other failure an "error"; neither is within target.
"""

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_demo import DEFAULT_URL, ROOT, recreate, run_measured  # noqa: E402

RESULT = ROOT / "bench" / "results" / "desk.json"
TARGET_MS = 300.0
MARK = "bench-desk"  # the location of the bench's own appointments, the note of its tasks
USERNAME = "bench-desk"
DOCTORS = [("家醫科", "王醫師"), ("家醫科", "李醫師"), ("心臟內科", "陳醫師"), ("眼科", "林醫師")]
APPOINTMENT_STATES = (
    ["booked"] * 8 + ["confirmed"] * 7 + ["attended"] * 3 + ["cancelled", "no_show"]
)
MESSAGE_STATES = ["delivered"] * 5 + ["sent"] * 3 + ["failed", "unknown", "queued"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--appointments", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    if not urlsplit(url).path.lstrip("/").endswith("_bench"):
        raise SystemExit("refusing: the benchmark database's name must end in _bench")

    seeded = ensure_seeded(url, patients=args.patients, seed=args.seed)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinic_crm.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    # Production renders without DEBUG (no query log); the test Client's host must be allowed.
    settings.DEBUG = False
    logging.getLogger("axes").setLevel(logging.WARNING)  # a line per login otherwise
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]

    day = make_day(appointments=args.appointments, seed=args.seed)
    pages = measure(day, runs=args.runs)
    within = all(page["within_target"] for page in pages.values())
    with psycopg.connect(url) as conn:
        patients = conn.execute("SELECT count(*) FROM patients_patient").fetchone()[0]
        server = conn.execute("SHOW server_version").fetchone()[0]
    result = {
        "benchmark": "desk",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "what": "server-side render time, Django test Client in-process, logged in as front desk",
        "patients": patients,
        "database": "reused" if not seeded else "seeded for this run",
        "day": day["date"],
        "appointments_that_day": day["appointments"],
        "open_tasks": day["open_tasks"],
        "runs": args.runs,
        "target_ms": TARGET_MS,
        "pages": pages,
        "within_targets": within,
        "machine": {
            "nproc": os.cpu_count(),
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
    print_table(result)


def ensure_seeded(url: str, *, patients: int, seed: int) -> bool:
    """Reuse the database if it holds `patients` patients; else recreate and seed it. Either
    way migrate it to the current code. Returns whether it was seeded now."""
    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    if patient_count(url) >= patients:
        run_measured([*manage, "migrate", "--verbosity", "0"], env)
        return False
    print(f"seeding {patients} patients into {urlsplit(url).path.lstrip('/')} (minutes)…")
    recreate(url)
    run_measured([*manage, "migrate", "--verbosity", "0"], env)
    run_measured([*manage, "seed_demo", "--patients", str(patients), "--seed", str(seed)], env)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return True


def patient_count(url: str) -> int:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres"))) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return 0
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('patients_patient')").fetchone()[0]
        return conn.execute("SELECT count(*) FROM patients_patient").fetchone()[0] if exists else 0


def make_day(*, appointments: int, seed: int) -> dict:
    """Today with `appointments` appointments, their reminders, and open call tasks."""
    from django.contrib.auth.models import Group, User
    from django.db import transaction
    from django.db.models import Count
    from django.utils import timezone

    from campaigns.models import Rule, RuleKind, Skip, SkipReason
    from clinic_crm.roles import FRONT_DESK
    from patients.models import Appointment, Patient
    from reminders.models import OutboxMessage, StaffTask

    rng = random.Random(seed)
    today = timezone.localdate()
    zone = timezone.get_current_timezone()
    start = datetime.combine(today, clock.min, zone)
    end = start + timedelta(days=1)
    rule = Rule.objects.filter(kind=RuleKind.APPOINTMENT).order_by("pk").first()
    if rule is None:
        raise SystemExit("no appointment rule in the database: was it migrated?")

    with transaction.atomic():
        mine = Appointment.objects.filter(location=MARK)
        StaffTask.objects.filter(note=MARK).delete()  # first: a task protects its message
        OutboxMessage.objects.filter(appointment__in=mine).delete()
        Skip.objects.filter(rule=rule, occurrence_key__in=[occurrence(a) for a in mine]).delete()
        mine.delete()
        already = Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end).count()
        wanted = max(0, appointments - already)
        ids = list(Patient.objects.filter(erased_at__isnull=True).values_list("pk", flat=True))
        chosen = rng.sample(ids, wanted)
        rows = []
        for n, patient_id in enumerate(chosen):
            department, doctor = DOCTORS[n % len(DOCTORS)]
            minutes = 8 * 60 + (n // len(DOCTORS)) * 10 % (12 * 60)  # 08:00 onwards, 10-min slots
            rows.append(
                Appointment(
                    patient_id=patient_id,
                    starts_at=start + timedelta(minutes=minutes),
                    department=department,
                    doctor=doctor,
                    location=MARK,
                    status=rng.choice(APPOINTMENT_STATES),
                )
            )
        made = Appointment.objects.bulk_create(rows)
        sent_at = start - timedelta(days=1) + timedelta(hours=10)
        messages, skips = [], []
        for appointment in made:
            key = occurrence(appointment)
            if rng.random() < 0.1:  # no consent: the reason shows instead of a reminder
                skips.append(
                    Skip(
                        rule=rule,
                        patient_id=appointment.patient_id,
                        occurrence_key=key,
                        reason=SkipReason.NO_CONSENT,
                        at=sent_at,
                    )
                )
                continue
            status = rng.choice(MESSAGE_STATES)
            messages.append(
                OutboxMessage(
                    rule=rule,
                    patient_id=appointment.patient_id,
                    appointment=appointment,
                    occurrence_key=key,
                    purpose=rule.purpose,
                    channel="sms",
                    status=status,
                    due_at=sent_at,
                    next_attempt_at=sent_at,
                    expires_at=appointment.starts_at,
                    attempts=0 if status == "queued" else 1,
                    sent_at=None if status in ("queued", "failed") else sent_at,
                    error="21211 invalid number" if status == "failed" else "",
                    body="明天上午回診提醒（bench）",
                )
            )
        OutboxMessage.objects.bulk_create(messages)
        Skip.objects.bulk_create(skips)
        failed = [m for m in messages if m.status == "failed"]
        tasks = [
            StaffTask(
                kind=StaffTask.Kind.CALL_UNREACHED,
                patient_id=message.patient_id,
                message=message,
                due_on=today,
                until=today + timedelta(days=1),
                note=MARK,
            )
            for message in failed
        ]
        StaffTask.objects.bulk_create(tasks)

        user = User.objects.filter(username=USERNAME).first() or User(username=USERNAME)
        user.is_staff, user.is_active = True, True
        user.set_unusable_password()
        user.save()
        user.groups.set([Group.objects.get(name=FRONT_DESK)])

    day_appointments = Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end)
    # The patient page of the day's patient with the longest record: the slowest one to open.
    heaviest = (
        Patient.objects.filter(pk__in=day_appointments.values("patient_id"))
        .annotate(visit_count=Count("visits"))
        .order_by("-visit_count", "pk")
        .values_list("pk", flat=True)
        .first()
    )
    return {
        "date": today.isoformat(),
        "appointments": day_appointments.count(),
        "open_tasks": StaffTask.objects.filter(done_at__isnull=True).count(),
        "user_id": user.pk,
        "patient_id": heaviest,
    }


def occurrence(appointment) -> str:
    """The occurrence key the appointment rules give a reminder (campaigns/kinds.py)."""
    return f"appointment:{appointment.pk}:{appointment.starts_at.astimezone(UTC).isoformat()}"


def measure(day: dict, *, runs: int) -> dict[str, dict]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(pk=day["user_id"]))
    pages = {
        "day view": "/desk/",
        "patient page": f"/admin/patients/patient/{day['patient_id']}/change/",
        "task list": "/desk/tasks/",
    }
    results = {}
    for name, path in pages.items():
        row: dict = {"url": path}
        try:
            warm = client.get(path)
        except Exception as error:  # noqa: BLE001 - a page half-built by someone else
            results[name] = row | {"status": "error", "error": repr(error), "within_target": False}
            continue
        if warm.status_code == 404:
            results[name] = row | {"status": "missing", "http": 404, "within_target": False}
            continue
        if warm.status_code != 200:
            results[name] = row | {
                "status": "error",
                "http": warm.status_code,
                "within_target": False,
            }
            continue
        queries = 0

        def count(execute, sql, params, many, context):
            nonlocal queries
            queries += 1
            return execute(sql, params, many, context)

        # Counted by a wrapper: the Client's request_started resets Django's own query log.
        with connection.execute_wrapper(count):
            client.get(path)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(path)
            response.content  # noqa: B018 - a streamed page is timed to its last byte
            times.append((time.perf_counter() - started) * 1000)
        median = statistics.median(times)
        results[name] = row | {
            "status": "ok",
            "median_ms": round(median, 1),
            "runs_ms": [round(t, 1) for t in times],
            "queries": queries,
            "bytes": len(warm.content),
            "within_target": median < TARGET_MS,
        }
    return results


def print_table(result: dict) -> None:
    print(
        f"desk pages, {result['patients']:,} patients, {result['appointments_that_day']} "
        f"appointments on {result['day']}, {result['open_tasks']} open tasks; "
        f"{result['machine']['nproc']} cores, PostgreSQL {result['machine']['postgres']}; "
        f"median of {result['runs']}, target < {result['target_ms']:.0f} ms"
    )
    print(f"{'page':<14} {'median ms':>10} {'queries':>8}  result")
    for name, page in result["pages"].items():
        if page["status"] == "ok":
            verdict = "within target" if page["within_target"] else "OVER TARGET"
            print(f"{name:<14} {page['median_ms']:>10.1f} {page['queries']:>8}  {verdict}")
        else:
            detail = page.get("http") or page.get("error", "")
            print(f"{name:<14} {'-':>10} {'-':>8}  {page['status'].upper()} ({detail})")
    print(f"within_targets: {result['within_targets']}  ({RESULT.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
