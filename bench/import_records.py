"""How fast `manage.py import_records` brings a clinic's records in, on PostgreSQL.

    .venv/bin/python bench/import_records.py [--patients 100000] [--visits 300000]
        [--appointments 50000] [--seed 1]

Recreates the benchmark database (BENCH_IMPORT_DATABASE_URL, by default
clinic_crm_import_bench) and migrates it; writes CSV files as a HIS exports them (ROC dates,
phones in local spellings, Big5 for the patients, UTF-8 with a BOM for the rest, explicit
consent columns on a third of the patients) into a temporary folder; then imports patients,
visits and appointments with the command, each in its own process, timing it and reading its
peak RSS. Memory must stay flat in the file's size: a tenth of the visits file is imported
first and its peak RSS compared with the whole file's. Encryption and blind indexes included.
Results go to bench/results/import_records.json; target: at least 5,000 rows/s overall.
"""

import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_demo import ROOT, recreate, run_measured  # noqa: E402


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run `command`; return its wall time, its own CPU time (user + system), its peak RSS in
    KiB and its stdout. CPU time is the fairer figure on a machine others are loading too."""
    import subprocess

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)  # noqa: S603
    output = process.stdout.read() if process.stdout else ""
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if process.stdout:
        process.stdout.close()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command[1:])} failed")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, output


RESULT = ROOT / "bench" / "results" / "import_records.json"
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/clinic_crm_import_bench"
TARGET_ROWS_PER_S = 5000.0
# Peak RSS of the whole visits file may exceed a tenth of it by this much and still be "flat"
# (the interpreter's own growth: caches, the allocator's arenas).
FLAT_SLACK_MIB = 40.0

SURNAMES = (
    "陳林黃張李王吳劉蔡楊許鄭謝洪郭邱曾廖賴徐周葉蘇莊呂江何"
    "蕭羅高潘簡朱鍾游彭詹胡施沈余盧梁趙顏柯翁魏孫戴"
)
GIVEN = "家豪志明俊傑建宏淑芬美玲雅婷怡君佳穎冠宇承恩宥廷欣怡詩涵柏翰品妤子涵宇軒"
DEPARTMENTS = [("家醫科", "王醫師"), ("內科", "林醫師"), ("小兒科", "陳醫師"), ("眼科", "張醫師")]
ICD = ["I10", "E11.9", "J06.9", "K21.9", "M54.5", "H52.1"]
ID_LETTERS = {letter: 10 + i for i, letter in enumerate("ABCDEFGHJKLMNPQRSTUVXYWZIO")}


def national_id(n: int) -> str:
    body = f"{1 + n % 2}{n % 10_000_000:07d}"
    area = ID_LETTERS["A"]
    weights = (8, 7, 6, 5, 4, 3, 2, 1)
    total = (
        area // 10 + (area % 10) * 9 + sum(int(d) * w for d, w in zip(body, weights, strict=True))
    )
    return f"A{body}{(10 - total % 10) % 10}"


def roc(day: date) -> str:
    return f"{day.year - 1911}/{day.month:02d}/{day.day:02d}"


def write_files(
    folder: Path, patients: int, visits: int, appointments: int, seed: int
) -> dict[str, Path]:
    rng = random.Random(seed)
    paths = {
        "patients": folder / "patients.csv",
        "visits": folder / "visits.csv",
        "visits_tenth": folder / "visits_tenth.csv",
        "appointments": folder / "appointments.csv",
    }
    with paths["patients"].open("w", encoding="cp950", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "病歷號",
                "姓名",
                "性別",
                "出生日期",
                "手機",
                "身分證字號",
                "電子郵件",
                "同意目的",
                "同意管道",
                "同意日期",
                "同意書編號",
            ]
        )
        for n in range(1, patients + 1):
            born = date(1940, 1, 1) + timedelta(days=rng.randrange(30000))
            mobile = f"09{n % 100_000_000:08d}"
            phone = rng.choice(
                [mobile, f"{mobile[:4]}-{mobile[4:7]}-{mobile[7:]}", f"+886 {mobile[1:]}"]
            )
            consent = (
                ["照護", "簡訊、LINE", roc(date(2024, 1, 2)), f"F{n}"]
                if n % 3 == 0
                else ["", "", "", ""]
            )
            writer.writerow(
                [
                    f"P{n:07d}",
                    rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, 2)),
                    rng.choice("男女"),
                    roc(born),
                    phone,
                    national_id(n),
                    f"p{n}@example.test",
                    *consent,
                ]
            )
    with (
        paths["visits"].open("w", encoding="utf-8-sig", newline="") as full,
        paths["visits_tenth"].open("w", encoding="utf-8-sig", newline="") as tenth,
    ):
        writers = [csv.writer(full), csv.writer(tenth)]
        header = ["就診編號", "病歷號", "就診日期", "科別", "醫師", "診斷碼"]
        for writer in writers:
            writer.writerow(header)
        for n in range(1, visits + 1):
            department, doctor = rng.choice(DEPARTMENTS)
            day = date(2020, 1, 1) + timedelta(days=rng.randrange(2000))
            row = [
                f"V{n:08d}",
                f"P{rng.randrange(1, patients + 1):07d}",
                f"{day.year - 1911}{day:%m%d}",
                department,
                doctor,
                ", ".join(rng.sample(ICD, rng.randrange(1, 3))),
            ]
            writers[0].writerow(row)
            if n <= visits // 10:
                writers[1].writerow(row)
    with paths["appointments"].open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["預約編號", "病歷號", "預約日期", "時段", "科別", "醫師", "診間"])
        for n in range(1, appointments + 1):
            department, doctor = rng.choice(DEPARTMENTS)
            day = date(2027, 1, 4) + timedelta(days=rng.randrange(60))
            writer.writerow(
                [
                    f"B{n:08d}",
                    f"P{rng.randrange(1, patients + 1):07d}",
                    roc(day),
                    f"{rng.randrange(8, 18):02d}:{rng.choice(['00', '15', '30', '45'])}",
                    department,
                    doctor,
                    f"{rng.randrange(1, 6)} 診",
                ]
            )
    return paths


def _one(conn: psycopg.Connection, query: str) -> object:
    row = conn.execute(query).fetchone()  # type: ignore[call-overload]
    if row is None:
        raise SystemExit(f"no answer to {query}")
    return row[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--visits", type=int, default=300_000)
    parser.add_argument("--appointments", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    url = os.environ.get("BENCH_IMPORT_DATABASE_URL", DEFAULT_URL)
    name = urlsplit(url).path.lstrip("/")
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to use {name!r}: the benchmark database must end in _bench")
    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    recreate(url)
    run_measured([*manage, "migrate", "--verbosity", "0"], env)

    steps = {}
    with tempfile.TemporaryDirectory(prefix="import_bench_") as folder:
        paths = write_files(Path(folder), args.patients, args.visits, args.appointments, args.seed)
        plan = [
            ("patients", "patients", args.patients),
            ("visits_tenth", "visits", args.visits // 10),
            ("visits", "visits", args.visits),
            ("appointments", "appointments", args.appointments),
        ]
        for step, kind, rows in plan:
            load = os.getloadavg()[0]
            seconds, cpu, rss_kib, output = run_timed(
                [*manage, "import_records", kind, str(paths[step])], env
            )
            steps[step] = {
                "rows": rows,
                "file_mib": round(paths[step].stat().st_size / 2**20, 1),
                "seconds": round(seconds, 2),
                "rows_per_s": round(rows / seconds),
                "cpu_seconds": round(cpu, 2),
                "rows_per_cpu_s": round(rows / cpu),
                "load_average_before": round(load, 2),
                "peak_rss_mib": round(rss_kib / 1024, 1),
                "summary": output.strip().splitlines()[-1],
            }
            print(step, steps[step], flush=True)
        # The same patients file again: every row matched, nothing written.
        seconds, cpu, rss_kib, output = run_timed(
            [*manage, "import_records", "patients", str(paths["patients"])], env
        )
        steps["patients_again"] = {
            "rows": args.patients,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "rows_per_s": round(args.patients / seconds),
            "peak_rss_mib": round(rss_kib / 1024, 1),
            "summary": output.strip().splitlines()[-1],
        }

    with psycopg.connect(url) as conn:
        server = _one(conn, "SHOW server_version")
        counts = {
            table: _one(conn, f"SELECT count(*) FROM {table}")  # noqa: S608
            for table in (
                "patients_patient",
                "patients_visit",
                "patients_appointment",
                "consent_consententry",
            )
        }
    main_steps = ("patients", "visits", "appointments")
    rows = sum(steps[s]["rows"] for s in main_steps)
    seconds = sum(steps[s]["seconds"] for s in main_steps)
    overall = rows / seconds
    flat = steps["visits"]["peak_rss_mib"] <= steps["visits_tenth"]["peak_rss_mib"] + FLAT_SLACK_MIB
    result = {
        "benchmark": "import_records",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "manage.py import_records KIND FILE (patients, then visits, then appointments)",
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(overall),
        # The importer's own CPU time (the database's work not included): what the same run
        # would approach on an idle machine with the database on another core.
        "rows_per_cpu_s": round(rows / sum(steps[s]["cpu_seconds"] for s in main_steps)),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "memory_flat": flat,
        "flat_slack_mib": FLAT_SLACK_MIB,
        "steps": steps,
        "stored": counts,
        "within_targets": overall >= TARGET_ROWS_PER_S and flat,
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
