"""Validate, match and write one file's rows (skeleton: the contract; the body follows)."""

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from patients.imports.report import ImportReport
from patients.models import ImportRun

ProgressCallback = Callable[[int], None]  # called with rows read so far, once per batch


def run_import(
    *,
    kind: str,
    path: str | Path,
    mapping: Mapping[str, str],
    dry_run: bool,
    keep_good: bool = False,
    rejects_path: str | Path | None = None,
    now: datetime,
    progress: ProgressCallback | None = None,
    run: ImportRun | None = None,
    encoding: str | None = None,
    full_day: bool = False,
    actor=None,
) -> ImportReport:
    """Import `path` (CSV or XLSX) as records of `kind`, its columns read through `mapping`
    (header → field name, as a Suggestion's or an ImportMapping's `columns`).

    Rows are streamed and written in batches; patients are matched by chart number, then
    national ID, then phone + birth date; other kinds reference the patient by chart number.
    A dry run writes nothing. A real run writes nothing when any row is bad, unless
    `keep_good`: then good rows are written and bad ones go to `rejects_path` (a CSV with the
    original columns and 錯誤原因). `full_day` (appointments): bookings on the days the file
    covers that are no longer in it are cancelled (setting IMPORT_CANCEL_VANISHED_APPOINTMENTS).
    `run`, when given, is kept up to date (status, counts, progress). The import is audited.

    Raises TableError when the file can't be read as a table and MappingError when `mapping`
    doesn't fit its headers (both with a zh-Hant `reason`); row problems never raise.
    """
    raise NotImplementedError
