"""The benchmarks' figures in one table, from what each wrote to bench/results/.

    .venv/bin/python bench/report.py

`make bench` runs it last. It reads the JSON files only (it measures nothing), prints a
Markdown table with the machine's core count, writes it to bench/results/summary.md, and says
which results are not within their targets. A result file that is missing is a row saying so.
"""

import json
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY = RESULTS / "summary.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _planner(name: str) -> tuple[str, str, str, bool | None]:
    result = _load(name)
    if result is None:
        return "not measured", "", "", None
    figure = (
        f"pass {result['planner_seconds']} s, hand-written SQL {result['sql_floor_seconds']} s: "
        f"**{result['ratio']}×** (target {result['targets']['ratio']}×); selection alone "
        f"{result['select_ratio']}×; {result['queued']:,} queued"
    )
    return figure, f"{result['planner_peak_rss_mib']} MiB", result["date"], result["within_targets"]


def _dispatch() -> tuple[str, str, str, bool | None]:
    result = _load("dispatch")
    if result is None:
        return "not measured", "", "", None
    rates = ", ".join(
        f"{n} → **{rate}/s**" for n, rate in result["messages_per_second_by_workers"].items()
    )
    limited = result["runs"]["rate_limited"]
    peaks = [run.get("worker_peak_rss_mib") for run in result["runs"].values()]
    peak = max((p for p in peaks if p), default=None)
    targets = result["targets"]
    figure = (
        f"workers {rates} (2 over 1: {result['two_workers_over_one']}×, target "
        f"{targets['two_workers_over_one']}×); under {limited['rate_limit']}: "
        f"{limited['messages_per_second']}/s on average (target "
        f"{targets['limited_average_share_of_limit']:.0%} of the limit), busiest second "
        f"{limited['busiest_second']} (limit {targets['busiest_second']})"
    )
    return figure, f"{peak} MiB a worker" if peak else "", result["date"], result["within_targets"]


def _medians(result: dict, section: str) -> str:
    return ", ".join(f"{name} {row['median_ms']:.0f} ms" for name, row in result[section].items())


def _import() -> tuple[str, str, str, bool | None]:
    result = _load("import_records")
    if result is None:
        return "not measured", "", "", None
    steps = result["steps"]
    figure = (
        f"**{result['rows_per_s']:,} rows/s** over {result['rows']:,} rows (target "
        f"{result['target_rows_per_s']:,.0f}); patients {steps['patients']['rows_per_s']:,}/s"
    )
    peak = max(step.get("peak_rss_mib", 0) for step in steps.values())
    flat = "flat" if result["memory_flat"] else "NOT flat"
    return figure, f"{peak} MiB ({flat})", result["date"], result["within_targets"]


def _pages(name: str, section: str, target: str) -> tuple[str, str, str, bool | None]:
    result = _load(name)
    if result is None:
        return "not measured", "", "", None
    figure = f"{_medians(result, section)} (target {target})"
    return figure, "", result["date"], result.get("within_targets")


def rows() -> list[tuple[str, str, str, str, bool | None]]:
    return [
        ("planner, 100 k patients", *_planner("planner_100k")),
        ("planner, 1 M patients", *_planner("planner_1000k")),
        ("dispatch, 1/2/4 workers", *_dispatch()),
        ("import_records (CSV)", *_import()),
        ("dashboard, 1.15 M messages", *_pages("dashboard", "pages", "1 s a page, 5 s ahead")),
        ("front-desk pages", *_pages("desk", "pages", "300 ms")),
        ("patient search", *_pages("search", "kinds", "300 ms")),
    ]


def main() -> None:
    lines = [
        f"Benchmarks on {os.cpu_count()} cores (bench/results/*.json; `make bench`)",
        "",
        "| benchmark | result | peak memory | measured | within targets |",
        "| --- | --- | --- | --- | --- |",
    ]
    missed = []
    for name, figure, memory, when, within in rows():
        mark = {True: "yes", False: "**no**", None: "—"}[within]
        lines.append(f"| {name} | {figure} | {memory} | {when[:16]} | {mark} |")
        if within is not True:
            missed.append(name)
    table = "\n".join(lines) + "\n"
    SUMMARY.write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    sys.stdout.write(f"\nnot within targets (or not measured): {', '.join(missed) or 'none'}\n")


if __name__ == "__main__":
    main()
