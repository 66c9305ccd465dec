"""The admin's import steps around patients.imports: an uploaded file kept privately while the
clerk maps and previews it, the preview of its first rows, and the worker task that imports it.

Files live under settings.IMPORT_DIR (never under a served URL):
  uploads/<token>/source.csv|xlsx + upload.json   while the clerk maps and previews
  runs/<run id>/source.csv|xlsx                   one run's own copy, deleted after the run
  rejects/<run id>.csv                            bad rows with reasons, for download
Uploads nobody imported and old rejects files are removed by patients.imports.feed.feed_task
after IMPORT_KEEP_HOURS.
"""

import json
import logging
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import models, transaction
from django.utils import timezone

from clinic_crm.fields import EncryptedTextField
from patients.imports import cells, importer
from patients.imports.kinds import KINDS
from patients.imports.mapping import MappingError, check_mapping, suggest_mapping
from patients.imports.report import ImportReport, RowError
from patients.imports.table import TableError, read_table
from patients.models import ImportMapping, ImportRun, Patient

logger = logging.getLogger(__name__)

SUFFIXES = (".csv", ".xlsx")
PREVIEW_ROWS = 20
TASK = "patients.imports.admin_flow.import_run_task"
# The cluster's timeout (120 s) is for quick jobs; a 100,000-row file takes minutes. A broker
# that re-delivers a still-running import finds the run claimed and does nothing.
TASK_TIMEOUT_SECONDS = 60 * 60
# Encodings a clerk can choose ("" = detect); Big5 is read as CP950 (patients.imports.table).
ENCODING_CHOICES = (
    ("", "自動偵測"),
    ("utf-8", "UTF-8"),
    ("utf-8-sig", "UTF-8（BOM）"),
    ("cp950", "Big5"),
)


ENCODING_LABELS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8（BOM）", "cp950": "Big5", "xlsx": "Excel"}


def encoding_label(encoding: str) -> str:
    """How staff know an encoding: Big5, not cp950."""
    return ENCODING_LABELS.get(encoding, encoding)


class UploadError(Exception):
    """The file can't be taken (too big, wrong type, unreadable); `reason` in zh-Hant."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def import_dir() -> Path:
    return Path(settings.IMPORT_DIR)


@dataclass
class Upload:
    """A file a clerk uploaded and is mapping: who, which kind, which columns, which encoding."""

    token: str
    kind: str
    file_name: str  # as the clerk's computer named it, for display
    suffix: str
    size: int
    user_id: int
    uploaded_at: str
    encoding: str = ""  # chosen; "" = detected
    columns: dict[str, str] = field(default_factory=dict)
    mapping_id: int | None = None

    @property
    def directory(self) -> Path:
        return import_dir() / "uploads" / self.token

    @property
    def path(self) -> Path:
        return self.directory / f"source{self.suffix}"

    def save(self) -> None:
        (self.directory / "upload.json").write_text(json.dumps(asdict(self)), encoding="utf-8")

    @property
    def mapping(self) -> ImportMapping | None:
        if self.mapping_id is None:
            return None
        return ImportMapping.objects.filter(pk=self.mapping_id).first()


def upload_store(*, kind: str, uploaded: UploadedFile, user: Any, now: datetime) -> Upload:
    """Keep `uploaded` privately and suggest its mapping (a saved one of the kind whose columns
    are exactly the file's headers wins). Raises UploadError (too big, not CSV/XLSX, no header)."""
    name = Path(uploaded.name or "").name
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise UploadError("只能匯入 CSV 或 Excel（.xlsx）檔。")
    cap = settings.IMPORT_MAX_UPLOAD_MB * 1024 * 1024
    if (uploaded.size or 0) > cap:
        raise UploadError(f"檔案超過 {settings.IMPORT_MAX_UPLOAD_MB} MB 的上限。")
    upload = Upload(
        token=secrets.token_urlsafe(16),
        kind=kind,
        file_name=name[:255],
        suffix=suffix,
        size=uploaded.size or 0,
        user_id=user.pk,
        uploaded_at=now.isoformat(),
    )
    upload.directory.mkdir(parents=True, mode=0o700)
    with upload.path.open("wb") as out:
        for chunk in uploaded.chunks():
            out.write(chunk)
    try:
        headers, _encoding = upload_headers(upload)
    except UploadError:
        shutil.rmtree(upload.directory, ignore_errors=True)
        raise
    saved = _saved_mapping_for(kind, headers)
    if saved is not None:
        upload.columns = {h: saved.columns.get(h, "") for h in headers}
        upload.mapping_id, upload.encoding = saved.pk, saved.encoding
    else:
        upload.columns = suggest_mapping(kind, headers).columns
    upload.save()
    return upload


def _saved_mapping_for(kind: str, headers: list[str]) -> ImportMapping | None:
    # The same HIS export every week: the clerk's saved mapping, not the guess, is wanted.
    wanted = set(headers)
    for saved in ImportMapping.objects.filter(kind=kind).order_by("-updated_at"):
        if set(saved.columns) == wanted:
            return saved
    return None


def upload_load(token: str, user: Any) -> Upload:
    """The upload `token` of `user`. Raises LookupError when there is none (or not theirs)."""
    if not token.replace("-", "").replace("_", "").isalnum():
        raise LookupError(token)
    state = import_dir() / "uploads" / token / "upload.json"
    try:
        upload = Upload(**json.loads(state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise LookupError(token) from exc
    if upload.user_id != user.pk:
        raise LookupError(token)
    return upload


def upload_headers(upload: Upload) -> tuple[list[str], str]:
    """The file's headers and the encoding it is read with. Raises UploadError."""
    try:
        with read_table(upload.path, encoding=upload.encoding or None) as table:
            return table.headers, table.encoding
    except TableError as exc:
        raise UploadError(exc.reason) from exc


def upload_set_mapping(
    *, upload: Upload, columns: dict[str, str], encoding: str, save_as: str, source: str = ""
) -> ImportMapping | None:
    """Remember the clerk's columns and encoding; with `save_as`, also as a named mapping
    (updated when the name exists for the same kind). Raises MappingError for a name taken by
    another kind's mapping."""
    upload.columns, upload.encoding = columns, encoding
    saved = None
    if save_as:
        saved = ImportMapping.objects.filter(name=save_as).first()
        if saved is not None and saved.kind != upload.kind:
            raise MappingError(f"名稱「{save_as[:40]}」已用於{KINDS[saved.kind].label}的欄位對應。")
        if saved is None:
            saved = ImportMapping(name=save_as, kind=upload.kind)
        saved.columns, saved.encoding = columns, encoding
        if source:
            saved.source = source
        saved.full_clean()
        saved.save()
        upload.mapping_id = saved.pk
    upload.save()
    return saved


# --- preview -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRow:
    number: int
    values: list[str]  # one per Preview.labels, as it will be stored (identifying ones masked)
    errors: list[RowError]
    outcome: str  # 新增, 更新, 未變更 or 錯誤


@dataclass(frozen=True)
class Preview:
    encoding: str
    labels: list[str]
    rows: list[PreviewRow]
    chart_numbers: list[str]  # for the audit: which stored patients the preview showed


def preview_rows(*, upload: Upload, now: datetime, limit: int = PREVIEW_ROWS) -> Preview:
    """The first `limit` rows parsed, matched and checked exactly as the import will (in a
    transaction rolled back at the end). Raises UploadError and MappingError (zh-Hant)."""
    spec = KINDS[upload.kind]
    try:
        with read_table(upload.path, encoding=upload.encoding or None) as table:
            positions = check_mapping(upload.kind, table.headers, upload.columns)
            report = ImportReport(upload.kind, "", table.encoding, dry_run=True)
            context = importer.Context(
                spec=spec,
                report=report,
                now=now,
                today=timezone.localdate(now),
                checksum="preview",
                file_name=upload.file_name,
                actor=None,
                headers={name: table.headers[i] for name, i in positions.items()},
                all_headers=table.headers,
            )
            handler = importer.HANDLERS[upload.kind](context)
            limits = importer._limits(spec, handler.model)
            width = len(table.headers)
            parsed = [
                importer._parse(context, row, positions, width, limits)
                for row in islice(table.rows(), limit)
            ]
            encoding = table.encoding
    except TableError as exc:
        raise UploadError(exc.reason) from exc
    try:
        with transaction.atomic():
            importer._apply(context, handler, parsed, lambda row: None)
            raise _Rollback
    except _Rollback:
        pass
    fields = [f for f in spec.fields if f.name in positions]
    outcomes = {change.row: change.action for change in report.changes}
    model = handler.model
    rows = []
    for row in parsed:
        if row.errors:
            outcome = "錯誤"
        else:
            outcome = {"added": "新增", "updated": "更新"}.get(
                outcomes.get(row.number, ""), "未變更"
            )
        values = [_display(model, f.name, row.values.get(f.name)) for f in fields]
        rows.append(PreviewRow(row.number, values, row.errors, outcome))
    charts = sorted({str(r.values["chart_no"]) for r in parsed if r.values.get("chart_no")})
    return Preview(encoding, [f.label for f in fields], rows, charts)


class _Rollback(Exception):
    pass


def _display(model: type[models.Model], name: str, value: Any) -> str:
    """A parsed value as staff read it: dates ISO, choices by their label, identifying
    (encrypted) fields masked, so a preview on a shared screen shows no national ID."""
    if value is None:
        return ""
    try:
        model_field: Any = model._meta.get_field(name)
    except Exception:  # noqa: BLE001 - consent and helper columns are not model fields
        model_field = None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], date):
        day, at = value
        text = day.isoformat() + (f" {at:%H:%M}" if at else "")
    elif isinstance(value, datetime):
        text = timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
    elif isinstance(value, (date, time)):
        text = value.isoformat() if isinstance(value, date) else f"{value:%H:%M}"
    elif isinstance(value, (list, tuple)):
        text = "、".join(str(item) for item in value)
    else:
        text = str(value)
    if model_field is not None and getattr(model_field, "choices", None):
        text = str(dict(model_field.choices).get(value, text))
    if isinstance(model_field, EncryptedTextField):
        text = cells.mask(text)
    return text


def preview_patient_ids(preview: Preview) -> list[int]:
    """Stored patients a preview showed (by chart number): what its audit entry names."""
    return list(
        Patient.objects.filter(chart_no__in=preview.chart_numbers).values_list("pk", flat=True)
    )


# --- queue and run -----------------------------------------------------------------------------


def run_dir(run_pk: int) -> Path:
    return import_dir() / "runs" / str(run_pk)


def rejects_path(run_pk: int) -> Path:
    return import_dir() / "rejects" / f"{run_pk}.csv"


def run_queue(
    *, upload: Upload, user: Any, dry_run: bool, keep_good: bool, full_day: bool
) -> ImportRun:
    """An ImportRun for `upload`, with its own copy of the file, handed to the worker once the
    request's transaction commits. A real import (not a check) ends the upload: the clerk
    starts again from a new file. Raises MappingError when the columns don't fit the file."""
    headers, _encoding = upload_headers(upload)
    check_mapping(upload.kind, headers, upload.columns)
    run = ImportRun.objects.create(
        kind=upload.kind,
        file_name=upload.file_name,
        mapping=upload.mapping,
        origin=ImportRun.Origin.ADMIN,
        columns=upload.columns,
        encoding=upload.encoding,
        dry_run=dry_run,
        all_or_nothing=not keep_good,
        full_day=full_day,
        started_by=user,
    )
    directory = run_dir(run.pk)
    directory.mkdir(parents=True, mode=0o700)
    shutil.copyfile(upload.path, directory / f"source{upload.suffix}")
    if not dry_run:
        shutil.rmtree(upload.directory, ignore_errors=True)
    transaction.on_commit(lambda: _enqueue(run.pk))
    return run


def _enqueue(run_pk: int) -> None:
    from django_q.tasks import async_task

    async_task(TASK, run_pk, task_name=f"import run {run_pk}", timeout=TASK_TIMEOUT_SECONDS)


def import_run_task(run_pk: int) -> str:
    """Run a queued admin import (the worker's entry point). Safe to run twice: only the
    first call claims the run. Deletes the run's copy of the file afterwards."""
    now = timezone.now()
    claimed = ImportRun.objects.filter(pk=run_pk, status=ImportRun.Status.QUEUED).update(
        status=ImportRun.Status.RUNNING, started_at=now
    )
    if not claimed:
        return "already claimed"
    run = ImportRun.objects.select_related("started_by").get(pk=run_pk)
    directory = run_dir(run_pk)
    sources = sorted(directory.glob("source.*")) if directory.is_dir() else []
    if not sources:
        run.status, run.summary, run.finished_at = (
            ImportRun.Status.FAILED,
            "找不到上傳的檔案（可能已過期刪除），請重新上傳。",
            timezone.now(),
        )
        run.save(update_fields=["status", "summary", "finished_at"])
        return "no file"
    _count_rows(run, sources[0])
    rejects = rejects_path(run_pk)
    rejects.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        report = importer.run_import(
            kind=run.kind,
            path=sources[0],
            mapping=run.columns,
            dry_run=run.dry_run,
            keep_good=not run.all_or_nothing,
            rejects_path=rejects,
            now=now,
            run=run,
            encoding=run.encoding or None,
            full_day=run.full_day,
            actor=run.started_by,
        )
    except (TableError, MappingError):
        return "failed"  # run_import marked the run failed with the reason
    except Exception:
        logger.exception("import run %s failed", run_pk)
        raise
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not report.rejected:
        rejects.unlink(missing_ok=True)
    return report.summary()


def _count_rows(run: ImportRun, source: Path) -> None:
    """Rows in the file, for the progress display's "of N": one quick read before the import
    (the file is streamed, so the total is not known otherwise)."""
    try:
        with read_table(source, encoding=run.encoding or None) as table:
            total = sum(1 for _row in table.rows())
    except TableError:
        return  # run_import says why, on the run
    run.rows_total = total
    run.save(update_fields=["rows_total"])


def rejects_file(run: ImportRun) -> Path | None:
    """The run's rejects CSV when it still exists inside a private import folder."""
    if not run.rejects_file:
        return None
    path = Path(run.rejects_file).resolve()
    roots = [Path(settings.IMPORT_DIR).resolve()]
    if settings.IMPORT_FEED_DIR:
        roots.append(Path(settings.IMPORT_FEED_DIR).resolve())
    if not any(path.is_relative_to(root) for root in roots) or not path.is_file():
        return None
    return path


def expired_remove(*, now: datetime) -> int:
    """Delete uploads nobody imported and rejects files older than IMPORT_KEEP_HOURS: they
    hold patient data and only stay for the clerk to act on. Returns how many were removed."""
    cutoff = now.timestamp() - settings.IMPORT_KEEP_HOURS * 3600
    removed = 0
    for folder in _children(import_dir() / "uploads"):
        if folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    for path in _children(import_dir() / "rejects"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def stale_runs_fail(*, now: datetime) -> int:
    """Mark runs still "running" long after any import could take as failed: their worker was
    stopped or timed out, and the run's single transaction was rolled back with it, so nothing
    was written. Returns how many."""
    cutoff = now - timedelta(seconds=TASK_TIMEOUT_SECONDS * 2)
    return ImportRun.objects.filter(status=ImportRun.Status.RUNNING, started_at__lt=cutoff).update(
        status=ImportRun.Status.FAILED,
        finished_at=now,
        summary="匯入中斷（逾時或背景工作程序重新啟動），未寫入任何資料；請重新匯入。",
    )


def _children(folder: Path) -> Iterable[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []
