"""The daily feed: files the HIS drops into a folder, imported by the worker with a saved mapping.

Layout under settings.IMPORT_FEED_DIR: one sub-folder per saved mapping, named exactly as the
mapping (`IMPORT_FEED_DIR/每日預約/appointments-20261203.csv`). The worker (feed_task, every
IMPORT_FEED_MINUTES) imports each CSV/XLSX file lying directly in such a folder, then moves it
to `done/` or `rejected/` inside it, with the bad rows beside it (`….errors.csv`). A file is
imported once: one whose checksum a feed run already imported (or refused) is moved to `done/`
without a run. Good rows are kept unless more than IMPORT_FEED_MAX_REJECT_SHARE of the rows are
bad: then nothing is applied, the run is `rejected`, a warning is logged and the manager's
dashboard lists it (failed_import_runs).
"""

import logging
import os
import time as clock
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from patients.imports import admin_flow, importer
from patients.imports.mapping import MappingError
from patients.imports.report import ImportReport
from patients.imports.table import TableError
from patients.models import ImportKind, ImportMapping, ImportRun

logger = logging.getLogger(__name__)

# The audit log names the feed as the actor (no staff member started it).
ACTOR = "daily import feed"
DONE, REJECTED, PROCESSING = "done", "rejected", "processing"
# Files the HIS is still writing: a temporary name, or touched within the settle time.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


class _TooManyRejects(Exception):
    def __init__(self, report: ImportReport):
        super().__init__("too many rejects")
        self.report = report


def feed_task() -> dict[str, int]:
    """The worker's scheduled entry point: import new feed files, remove expired uploads, fail
    runs whose worker died."""
    now = timezone.now()
    runs = feed_scan(now=now)
    removed = admin_flow.expired_remove(now=now)
    stale = admin_flow.stale_runs_fail(now=now)
    return {"runs": len(runs), "expired_removed": removed, "stale_failed": stale}


def feed_folder(mapping: ImportMapping) -> Path | None:
    """Where files for `mapping` are dropped; None when the feed is off or the name can't be a
    folder name."""
    if not settings.IMPORT_FEED_DIR or mapping.name in (".", "..") or "/" in mapping.name:
        return None
    return Path(settings.IMPORT_FEED_DIR) / mapping.name


def feed_scan(*, now: datetime) -> list[ImportRun]:
    """Import every waiting file of every mapping's folder, oldest first; the runs made."""
    runs = []
    for mapping in ImportMapping.objects.order_by("name"):
        folder = feed_folder(mapping)
        if folder is None or not folder.is_dir():
            continue
        waiting = [path for path in folder.iterdir() if _ready(path)]
        for path in sorted(waiting, key=lambda p: (p.stat().st_mtime, p.name)):
            run = feed_import_file(mapping=mapping, path=path, now=now)
            if run is not None:
                runs.append(run)
    return runs


def _ready(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    name = path.name.lower()
    if name.endswith(PARTIAL_SUFFIXES) or not name.endswith(admin_flow.SUFFIXES):
        return False
    return clock.time() - path.stat().st_mtime >= settings.IMPORT_FEED_SETTLE_SECONDS


def feed_import_file(*, mapping: ImportMapping, path: Path, now: datetime) -> ImportRun | None:
    """Import one feed file with `mapping` and move it to done/ or rejected/; None when it was
    already imported (or another worker took it first)."""
    folder = path.parent
    (folder / PROCESSING).mkdir(exist_ok=True)
    claimed = folder / PROCESSING / path.name
    try:
        # A rename is atomic: of two workers scanning at once, one gets the file.
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    except OSError:
        # Not ours to move (permissions): say so once per scan, leave it, go on with the rest.
        logger.warning(
            "import feed: cannot move a file out of the folder of mapping %s", mapping.pk
        )
        return None
    stamp = timezone.localtime(now).strftime("%Y%m%d-%H%M%S")
    checksum = importer.file_checksum(claimed)
    seen = (
        ImportRun.objects.filter(origin=ImportRun.Origin.FEED, kind=mapping.kind, checksum=checksum)
        .exclude(status=ImportRun.Status.FAILED)
        .values_list("status", flat=True)
        .first()
    )
    if seen:
        # The same bytes again: where the first one went (a refused file stays refused).
        again = DONE if seen == ImportRun.Status.DONE else REJECTED
        logger.info("import feed: a file for mapping %s came again, moved to %s", mapping.pk, again)
        _move(claimed, folder / again, f"{stamp}-duplicate-{path.name}")
        return None
    run = ImportRun.objects.create(
        kind=mapping.kind,
        file_name=path.name[:255],
        checksum=checksum,
        mapping=mapping,
        origin=ImportRun.Origin.FEED,
        columns=mapping.columns,
        encoding=mapping.encoding,
        all_or_nothing=False,
        full_day=mapping.kind == ImportKind.APPOINTMENTS and settings.IMPORT_FEED_FULL_DAY,
        status=ImportRun.Status.RUNNING,
        started_at=now,
    )
    errors_file = folder / PROCESSING / f"{path.name}.errors.csv"
    outcome = _import(run, mapping, claimed, errors_file, now)
    target = folder / (DONE if outcome == ImportRun.Status.DONE else REJECTED)
    _move(claimed, target, f"{stamp}-{path.name}")
    if errors_file.exists() and not run.rejected:
        errors_file.unlink()  # written with its header row even when no row was bad
    elif errors_file.exists():
        kept = _move(errors_file, target, f"{stamp}-{path.name}.errors.csv")
        run.rejects_file = str(kept)[:500]
        run.save(update_fields=["rejects_file"])
    return run


def _import(
    run: ImportRun, mapping: ImportMapping, path: Path, errors_file: Path, now: datetime
) -> str:
    share = settings.IMPORT_FEED_MAX_REJECT_SHARE
    try:
        # Our own transaction around run_import's: rolling it back undoes the good rows too
        # when the file has too many bad ones. The run row is not passed in (it is written
        # after), so no progress write from another connection waits on this transaction.
        with transaction.atomic():
            report = importer.run_import(
                kind=mapping.kind,
                path=path,
                mapping=mapping.columns,
                dry_run=False,
                keep_good=True,
                rejects_path=errors_file,
                now=now,
                encoding=mapping.encoding or None,
                full_day=run.full_day,
                actor=ACTOR,
            )
            if report.rows_total and report.rejected / report.rows_total > share:
                raise _TooManyRejects(report)
    except _TooManyRejects as stop:
        report = stop.report
        report.written = False
        report.note = (
            f"錯誤列占 {report.rejected / report.rows_total:.0%}，超過每日匯入容許的 "
            f"{share:.0%}：整批未匯入，請檢查 HIS 匯出的檔案。"
        )
        importer._finish_run(run, report=report, now=now)
        run.status = ImportRun.Status.REJECTED
        run.save(update_fields=["status"])
        logger.warning(
            "import feed run %s rejected: %s of %s rows bad, nothing applied",
            run.pk,
            report.rejected,
            report.rows_total,
        )
        return run.status
    except (TableError, MappingError) as exc:
        _fail(run, exc.reason)
        logger.warning("import feed run %s failed: the file or the mapping is unusable", run.pk)
        return run.status
    except Exception:
        _fail(run, "匯入時發生系統錯誤。")
        logger.exception("import feed run %s failed", run.pk)
        return run.status
    importer._finish_run(run, report=report, now=now)
    if report.rejected:
        logger.warning(
            "import feed run %s: %s of %s rows rejected", run.pk, report.rejected, report.rows_total
        )
    return run.status


def _fail(run: ImportRun, reason: str) -> None:
    run.status, run.summary, run.finished_at = ImportRun.Status.FAILED, reason[:500], timezone.now()
    run.save(update_fields=["status", "summary", "finished_at"])


def _move(path: Path, folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    target = folder / name
    os.replace(path, target)
    return target


def failed_import_runs(since: datetime) -> QuerySet[ImportRun]:
    """Feed runs since `since` that failed or were refused (nothing applied): the manager's
    dashboard lists them under "needs attention". Newest first."""
    return ImportRun.objects.filter(
        origin=ImportRun.Origin.FEED,
        status__in=(ImportRun.Status.FAILED, ImportRun.Status.REJECTED),
        queued_at__gte=since,
    ).select_related("mapping")
