"""Validate, match and write one file's rows, a batch at a time.

Each batch costs a fixed number of queries whatever its size: one to find the patients (or
records) its rows match, one bulk INSERT, one bulk UPDATE. The whole run is one transaction;
a dry run and an all-or-nothing run with a bad row roll it back at the end, so what the report
counts is exactly what a real run would do.
"""

import csv
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import phonenumbers
from django.conf import settings
from django.db import DatabaseError, connection, connections, models, reset_queries, transaction
from django.db.models import Q, TextField, Value
from django.utils import timezone

from clinic_crm import normalise
from clinic_crm.copy_insert import insert_new
from clinic_crm.exports import FORMULA_STARTS, cell_neutralise
from clinic_crm.fields import BlindIndexField, EncryptedTextField, MobileFlagField, Sealed
from clinic_crm.lookups import any_sql
from consent.models import Action, ConsentEntry, ConsentState, Source
from consent.services import consent_bulk_record, consent_record
from patients.imports import cells
from patients.imports.kinds import KINDS, FieldSpec, KindSpec
from patients.imports.mapping import check_mapping
from patients.imports.report import MAX_LISTED_CHANGES, Change, ImportReport, RowError
from patients.imports.table import MAX_CELL_CHARS, Row, read_table
from patients.models import (
    Appointment,
    AuditEntry,
    AuditLink,
    ImportKind,
    ImportRun,
    MonthDayField,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
)
from patients.services import audit_record, prescription_sync_refills

ProgressCallback = Callable[[int], None]  # called with rows read so far, once per batch

BATCH = 2000  # rows per query and per bulk write
# Fields an import changes that no column names (an appointment's confirmation, reset by a move).
CHANGE_LABELS = {"status": "預約狀態", "confirmed_via": "確認方式", "confirmed_at": "確認時間"}
REASON_COLUMN = "錯誤原因"
LIVE = (Appointment.Status.BOOKED, Appointment.Status.CONFIRMED)


class _Rollback(Exception):
    """Leaves the run's transaction without keeping anything (dry run, or a rejected file)."""


@dataclass
class Parsed:
    """One row read from the file: parsed values by field name (None for an empty cell), the
    original cells (for the rejects file) and its errors so far."""

    number: int
    cells: list[str]
    values: dict[str, Any]
    errors: list[RowError] = field(default_factory=list)


@dataclass
class Context:
    spec: KindSpec
    report: ImportReport
    now: datetime
    today: date
    checksum: str
    file_name: str
    actor: Any
    headers: dict[str, str]  # field name → the file's header for it (for error messages)
    all_headers: list[str]
    audit: AuditEntry | None = None
    # Appointments, full-day feed: the local days the file covers and the HIS numbers in it.
    days: set[date] = field(default_factory=set)
    seen_ids: set[str] = field(default_factory=set)
    unreadable_ids: bool = False

    def reject(self, row: Parsed, field_name: str, value: str, reason: str) -> None:
        column = self.headers.get(field_name, field_name)
        row.errors.append(RowError(row.number, column, cells.mask(value), reason))

    def change(self, row: Parsed, key: str, action: str, fields: tuple[str, ...] = ()) -> None:
        if action == "added":
            self.report.added += 1
        else:
            self.report.updated += 1
        if len(self.report.changes) < MAX_LISTED_CHANGES:
            known = {f.name: f.label for f in self.spec.fields} | CHANGE_LABELS
            labels = tuple(known.get(name, name) for name in fields)
            self.report.changes.append(Change(row.number, key, action, labels))

    def audit_patients(self, patients: dict[int, Any]) -> None:
        """Link the run's audit entry to `patients` (id → uuid) written by a batch."""
        if not patients:
            return
        if self.audit is None:
            self.audit = audit_record(
                actor=self.actor,
                action=AuditEntry.Action.IMPORT,
                patients=[],
                detail=f"{self.spec.kind} {self.file_name}"[:300],
            )
        # One INSERT … SELECT per batch (not a model object per patient). A patient linked by
        # an earlier batch (their second visit) is left out before inserting, cheaper than
        # letting each row meet the unique (entry, patient), which still guards the rest.
        among, ids = any_sql("p.id", sorted(patients), Patient._meta.pk.db_type(connection))
        links = AuditLink._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {links} (entry_id, patient_id, patient_uuid) "  # noqa: S608
                f"SELECT %s, p.id, p.uuid FROM {Patient._meta.db_table} p WHERE {among} "
                f"AND NOT EXISTS (SELECT 1 FROM {links} l WHERE l.entry_id = %s "
                "AND l.patient_id = p.id) ON CONFLICT DO NOTHING",
                [self.audit.pk, *ids, self.audit.pk],
            )


def file_checksum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    actor: Any = None,
) -> ImportReport:
    """Import `path` (CSV or XLSX) as records of `kind`, its columns read through `mapping`
    (header → field name, as a Suggestion's or an ImportMapping's `columns`).

    Rows are streamed and written in batches; patients are matched by chart number, then
    national ID, then phone + birth date; other kinds reference the patient by chart number.
    An empty cell never clears what is stored. A dry run writes nothing. A real run writes
    nothing when any row is bad, unless `keep_good`: then good rows are written. Bad rows go
    to `rejects_path` when given (a CSV with the original columns and 錯誤原因, to fix and
    re-import). `full_day` (appointments): bookings from the HIS on the days the file covers
    that are no longer in it are cancelled (setting IMPORT_CANCEL_VANISHED_APPOINTMENTS).
    `run`, when given, is kept up to date (status, counts, progress). The import is audited.

    Raises TableError when the file can't be read as a table and MappingError when `mapping`
    doesn't fit its headers (both with a zh-Hant `reason`; `run` is marked failed); row
    problems never raise.
    """
    from patients.imports.mapping import MappingError
    from patients.imports.table import TableError

    spec = KINDS[kind]
    checksum = file_checksum(path)
    if run is not None:
        run.status, run.started_at, run.checksum = ImportRun.Status.RUNNING, now, checksum
        run.save(update_fields=["status", "started_at", "checksum"])
    progress_to = _progress(progress, run)
    try:
        with read_table(path, encoding=encoding) as table, _phone_parse_cache():
            positions = check_mapping(kind, table.headers, dict(mapping))
            report = ImportReport(kind, checksum, table.encoding, dry_run)
            context = Context(
                spec=spec,
                report=report,
                now=now,
                today=timezone.localdate(now),
                checksum=checksum,
                file_name=Path(path).name,
                actor=actor,
                headers={name: table.headers[index] for name, index in positions.items()},
                all_headers=table.headers,
            )
            with _rejects_writer(rejects_path, table.headers) as write_reject:
                _run(
                    context,
                    table.rows(),
                    positions,
                    len(table.headers),
                    dry_run=dry_run,
                    keep_good=keep_good,
                    full_day=full_day,
                    progress=progress_to,
                    write_reject=write_reject,
                )
            report.rejects_path = str(rejects_path) if rejects_path and report.rejected else ""
    except (TableError, MappingError) as exc:
        if run is not None:
            _finish_run(run, status=ImportRun.Status.FAILED, summary=exc.reason, now=now)
        raise
    except Exception:
        if run is not None:
            _finish_run(
                run, status=ImportRun.Status.FAILED, summary="匯入時發生系統錯誤。", now=now
            )
        raise
    if run is not None:
        _finish_run(run, report=report, now=now)
    return report


def _run(
    context: Context,
    rows: Iterator[Row],
    positions: dict[str, int],
    width: int,
    *,
    dry_run: bool,
    keep_good: bool,
    full_day: bool,
    progress: ProgressCallback,
    write_reject: Callable[[Parsed], None],
) -> None:
    report = context.report
    handler = HANDLERS[context.spec.kind](context)
    columns = _columns(context.spec, positions, _limits(context.spec, handler.model))
    try:
        with transaction.atomic():
            _probe_by_index()
            batch: list[Parsed] = []
            for row in rows:
                report.rows_total += 1
                batch.append(_parse_row(context, row, columns, width))
                if len(batch) >= BATCH:
                    _apply(context, handler, batch, write_reject)
                    batch = []
                    progress(report.rows_total)
            if batch:
                _apply(context, handler, batch, write_reject)
            progress(report.rows_total)
            if full_day and context.spec.kind == ImportKind.APPOINTMENTS:
                _cancel_vanished(context)
            if dry_run:
                raise _Rollback
            if report.rejected and not keep_good:
                report.note = (
                    "檔案中有錯誤的列，整批未匯入；請修正後重新匯入，或選擇只匯入正確的列。"
                )
                raise _Rollback
            report.written = True
    except _Rollback:
        report.written = False


def _probe_by_index() -> None:
    """Each batch looks up thousands of chart numbers and digests at once. With PostgreSQL's
    default cost of a random page (4, for spinning disks) the planner answers that by reading
    the whole patient table, which grows as the import adds to it: each batch slower than the
    last (95 ms a batch at 100,000 patients, against 27 ms by index). For this transaction
    only, a random read costs what it does on an SSD or from memory."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL random_page_cost = 1.1")


def _apply(
    context: Context,
    handler: "Handler",
    batch: list[Parsed],
    write_reject: Callable[[Parsed], None],
) -> None:
    if context.spec.kind == ImportKind.APPOINTMENTS:
        for row in batch:
            # A bad row's booking is still in the HIS: never cancel it as vanished.
            if row.values.get("external_id"):
                context.seen_ids.add(row.values["external_id"])
            elif row.errors:
                context.unreadable_ids = True
    # With DEBUG on, Django keeps every query's SQL, and a bulk INSERT's is megabytes: memory
    # would grow with the file. Each batch starts the log afresh.
    reset_queries()
    good = [row for row in batch if not row.errors]
    try:
        with transaction.atomic():
            handler.apply(good)
    except DatabaseError:
        # Something our checks missed (a unique value taken by a concurrent writer): find the
        # row by applying each alone, so one bad row doesn't sink the batch in keep-good mode.
        for row in good:
            try:
                with transaction.atomic():
                    handler.apply([row])
            except DatabaseError:
                context.reject(
                    row, "", "", "資料庫拒絕此列（可能與現有資料重複），請檢查後再匯入。"
                )
    for row in batch:
        if row.errors:
            context.report.rejected += 1
            context.report.errors.extend(row.errors)
            write_reject(row)


def _limits(spec: KindSpec, model: type[models.Model]) -> dict[str, int]:
    limits = {}
    for field_spec in spec.fields:
        try:
            model_field = model._meta.get_field(field_spec.name)
        except Exception:  # noqa: S112 - consent and helper columns are not model fields
            continue
        max_length = getattr(model_field, "max_length", None)
        if max_length and field_spec.parse in ("text", "name", "multiline"):
            limits[field_spec.name] = max_length
    return limits


@dataclass(frozen=True)
class Column:
    """A mapped column, worked out once per run (not once per cell)."""

    name: str
    index: int
    spec: FieldSpec
    parse: Callable[[str], Any]
    limit: int | None


def _columns(spec: KindSpec, positions: dict[str, int], limits: dict[str, int]) -> list[Column]:
    return [
        Column(
            name, index, spec.field(name), cells.PARSERS[spec.field(name).parse], limits.get(name)
        )
        for name, index in positions.items()
    ]


def _parse(
    context: Context, row: Row, positions: dict[str, int], width: int, limits: dict[str, int]
) -> Parsed:
    """One row parsed as the import parses it (the admin's preview calls this)."""
    return _parse_row(context, row, _columns(context.spec, positions, limits), width)


def _parse_row(context: Context, row: Row, columns: list[Column], width: int) -> Parsed:
    parsed = Parsed(row.number, row.cells, {})
    if row.error:
        parsed.cells = []
        parsed.errors.append(RowError(row.number, "", "", row.error))
        return parsed
    too_long = [i for i, cell in enumerate(row.cells) if len(cell) > MAX_CELL_CHARS]
    if too_long:
        # Never keep (or write back) a 10 MB cell: the row is refused with the reason.
        parsed.cells = ["" if i in too_long else cell for i, cell in enumerate(row.cells)]
        for index in too_long:
            header = context.all_headers[index] if index < len(context.all_headers) else ""
            parsed.errors.append(RowError(row.number, header, "", cells_too_long()))
        return parsed
    if any(cell.strip() for cell in row.cells[width:]):
        parsed.errors.append(RowError(row.number, "", "", "此列的欄位比標題列多，欄位可能錯位。"))
    values = parsed.values
    count = len(row.cells)
    for column in columns:
        raw = row.cells[column.index].strip() if column.index < count else ""
        # Excel's text marker, as our own exports and the rejects file write a formula.
        if raw[:1] == "'" and raw[1:2] and raw[1:2].startswith(FORMULA_STARTS):
            raw = raw[1:]
        if not raw:
            if column.spec.required:
                context.reject(parsed, column.name, "", f"「{column.spec.label}」不可空白。")
            values[column.name] = None
            continue
        try:
            value = column.parse(raw)
            if column.limit and isinstance(value, str) and len(value) > column.limit:
                raise cells.CellError(f"超過 {column.limit} 個字。")
        except cells.CellError as exc:
            context.reject(parsed, column.name, raw, exc.reason)
            continue
        values[column.name] = value
    return parsed


def cells_too_long() -> str:
    return f"儲存格超過 {MAX_CELL_CHARS:,} 個字元，無法匯入。"


# --- writing ---------------------------------------------------------------------------------


def _prepare_update(obj: models.Model, names: set[str], now: datetime) -> list[str]:
    """The columns to bulk_update for `obj` after changing `names`: those, every value derived
    from them (blind indexes, the SMS flag, the birthday column) and updated_at. bulk_update
    skips pre_save, so encrypted values are sealed and derived ones computed here."""
    update = set(names)
    for model_field in obj._meta.concrete_fields:
        if isinstance(model_field, BlindIndexField) and names & set(model_field.source_fields):
            update.add(model_field.name)
        elif (
            isinstance(model_field, (MobileFlagField, MonthDayField))
            and model_field.source in names
        ):
            update.add(model_field.name)
    if any(f.name == "updated_at" for f in obj._meta.concrete_fields):
        obj.updated_at = now  # type: ignore[attr-defined]
        update.add("updated_at")
    # Derived values first: they read the plaintext the sealing below replaces.
    fields: list[Any] = [obj._meta.get_field(name) for name in update]
    for model_field in sorted(fields, key=lambda f: isinstance(f, EncryptedTextField)):
        value = model_field.pre_save(obj, False)
        if isinstance(model_field, EncryptedTextField):
            obj.__dict__[model_field.attname] = value
    return sorted(update)


def _bulk_update(
    model: type[models.Model], pending: list[tuple[models.Model, set[str]]], now: datetime
) -> None:
    if not pending:
        return
    # bulk_update writes the same columns for every row: each object gets the union (a value
    # it didn't change is written back as it is; a still-sealed one isn't even re-encrypted).
    names: set[str] = set().union(*(changed for _obj, changed in pending))
    columns: list[str] = []
    for obj, _changed in pending:
        columns = _prepare_update(obj, names, now)
    # bulk_update reads values through the attribute, which would decrypt a sealed value again;
    # the token goes in as an expression instead, and the sealed value is put back after.
    encrypted = [
        f
        for f in model._meta.concrete_fields
        if isinstance(f, EncryptedTextField) and f.name in columns
    ]
    for obj, _changed in pending:
        for model_field in encrypted:
            sealed = obj.__dict__[model_field.attname]
            if isinstance(sealed, Sealed):
                obj.__dict__[model_field.attname] = Value(sealed.token, output_field=TextField())
    model._default_manager.bulk_update(
        [obj for obj, _changed in pending], columns, batch_size=BATCH
    )
    for obj, _changed in pending:
        for model_field in encrypted:
            value = obj.__dict__[model_field.attname]
            if isinstance(value, Value):
                obj.__dict__[model_field.attname] = Sealed(value.value)


def _differences(obj: models.Model, values: dict[str, Any]) -> set[str]:
    return {
        name for name, value in values.items() if value is not None and getattr(obj, name) != value
    }


class Handler:
    """Matches and writes one batch of good rows of one kind."""

    model: type[models.Model] = Patient

    def __init__(self, context: Context):
        self.context = context

    def apply(self, rows: list[Parsed]) -> None:
        raise NotImplementedError


# --- patients --------------------------------------------------------------------------------

PATIENT_FIELDS = (
    "chart_no",
    "name",
    "sex",
    "birth_date",
    "phone",
    "email",
    "national_id",
    "line_user_id",
    "caregiver_contact",
    "notes",
)


def _digest(field_name: str, raw: str | None) -> str | None:
    digest = Patient.index_of(field_name, raw) if raw else None
    return str(digest) if digest else None


class PatientHandler(Handler):
    model = Patient

    def apply(self, rows: list[Parsed]) -> None:
        context = self.context
        for row in rows:
            born = row.values.get("birth_date")
            if born and born > context.today:
                context.reject(row, "birth_date", str(born), "出生日期不能晚於今天。")
            self._check_consent(row)
        rows = [row for row in rows if not row.errors]
        if not rows:
            return
        keys = {}
        for row in rows:
            keys[row.number] = (
                _digest("national_id", row.values.get("national_id")),
                _digest("phone", row.values.get("phone")),
            )
        # Indexed lookups one after the other, not one OR (SQLite scans the table for an OR of
        # IN lists): chart numbers, national IDs (all of them: one held by another patient is
        # an error), then phone + birth date only for rows neither found.
        found: dict[int, Patient] = {}
        charts = [row.values["chart_no"] for row in rows]
        nids = [nid for nid, _phone in keys.values() if nid]
        for lookup, wanted in (("chart_no__any", charts), ("national_id_bidx__any", nids)):
            if wanted:
                for hit in Patient.objects.filter(**{lookup: wanted}):
                    found[hit.pk] = hit
        known_charts = {p.chart_no for p in found.values()}
        known_nids = {p.national_id_bidx for p in found.values() if p.national_id_bidx}
        unmatched = [
            (keys[row.number][1], row.values["birth_date"])
            for row in rows
            if row.values["chart_no"] not in known_charts
            and keys[row.number][0] not in known_nids
            and keys[row.number][1]
            and row.values.get("birth_date")
        ]
        if unmatched:
            for hit in Patient.objects.filter(
                phone_bidx__any={phone for phone, _born in unmatched},
                birth_date__any={born for _phone, born in unmatched},
            ).exclude(pk__in=list(found)):
                found[hit.pk] = hit
        by_chart: dict[str, Patient] = {}
        by_nid: dict[str, Patient] = {}
        by_phone_birth: dict[tuple[str, date], list[Patient]] = {}
        for hit in found.values():
            self._index(hit, by_chart, by_nid, by_phone_birth)
        touched: dict[int, Patient] = {}  # id(patient) → patient, written by this batch
        new: list[Patient] = []
        updates: dict[int, tuple[Patient, set[str]]] = {}
        consents: list[tuple[Parsed, Patient]] = []
        for row in rows:
            values: dict[str, Any] = {
                n: row.values.get(n) for n in PATIENT_FIELDS if n in row.values
            }
            nid, phone = keys[row.number]
            patient = by_chart.get(str(values["chart_no"])) or (by_nid.get(nid) if nid else None)
            if patient is None and phone and values.get("birth_date"):
                patient = self._by_phone_birth(
                    row, by_phone_birth.get((phone, values["birth_date"]), []), nid
                )
                if row.errors:
                    continue
            if patient is not None and nid:
                holder = by_nid.get(nid)
                if holder is not None and holder is not patient:
                    context.reject(
                        row,
                        "national_id",
                        str(values["national_id"]),
                        "此身分證號已屬於另一位病人。",
                    )
                    continue
            if patient is None:
                patient = Patient(**{k: v for k, v in values.items() if v is not None})
                new.append(patient)
                touched[id(patient)] = patient
                self._index(patient, by_chart, by_nid, by_phone_birth, nid=nid, phone=phone)
                context.change(row, values["chart_no"], "added")
                consents.append((row, patient))
                continue
            changed = _differences(patient, values)
            if id(patient) in touched:
                # The same patient twice in one batch: fine when the rows agree.
                if changed:
                    context.reject(
                        row,
                        "chart_no",
                        str(values["chart_no"]),
                        "同一位病人在檔案中出現兩次，內容不同。",
                    )
                else:
                    context.report.unchanged += 1
                continue
            touched[id(patient)] = patient
            consents.append((row, patient))
            if not changed:
                context.report.unchanged += 1
                continue
            for name in changed:
                setattr(patient, name, values[name])
            updates[id(patient)] = (patient, changed)
            self._index(patient, by_chart, by_nid, by_phone_birth, nid=nid, phone=phone)
            context.change(row, patient.chart_no, "updated", tuple(sorted(changed)))
        insert_new(Patient, new)
        _bulk_update(Patient, list(updates.values()), context.now)
        self._record_consents(consents)
        context.audit_patients({p.pk: p.uuid for p in touched.values()})

    @staticmethod
    def _index(patient, by_chart, by_nid, by_phone_birth, *, nid=None, phone=None) -> None:
        by_chart[patient.chart_no] = patient
        nid = nid or patient.national_id_bidx
        phone = phone or patient.phone_bidx
        if nid:
            by_nid[nid] = patient
        if phone and patient.birth_date:
            group = by_phone_birth.setdefault((phone, patient.birth_date), [])
            if patient not in group:
                group.append(patient)

    def _by_phone_birth(
        self, row: Parsed, candidates: list[Patient], nid: str | None
    ) -> Patient | None:
        if not candidates:  # the usual new patient: no name digest to compute
            return None
        # Twins share a phone and a birth date: the name must agree too, and a different
        # national ID on record means a different person.
        name = _digest("name", row.values.get("name"))
        same = [
            p
            for p in candidates
            if (p.name_bidx or _digest("name", p.name)) == name
            and not (nid and p.national_id_bidx and p.national_id_bidx != nid)
        ]
        if len(same) > 1:
            self.context.reject(
                row,
                "phone",
                row.values["phone"],
                "電話與出生日期符合多位病人，請填病歷號或身分證號。",
            )
            return None
        return same[0] if same else None

    def _check_consent(self, row: Parsed) -> None:
        given = {
            k: row.values.get(k) for k in ("consent_purpose", "consent_channel", "consent_date")
        }
        if not any(given.values()) and not row.values.get("consent_evidence"):
            return
        missing = [KINDS[ImportKind.PATIENTS].field(k).label for k, v in given.items() if not v]
        if missing:
            self.context.reject(
                row, "consent_purpose", "", "同意資料不完整，缺少：" + "、".join(missing)
            )
        elif given["consent_date"] and given["consent_date"] > self.context.today:
            self.context.reject(
                row, "consent_date", str(given["consent_date"]), "同意日期不能晚於今天。"
            )

    def _record_consents(self, consents: list[tuple[Parsed, Patient]]) -> None:
        """Ledger entries for explicit consent columns only: evidence is the file's checksum
        (and the form reference the file gives). A row already recorded is not recorded twice."""
        context = self.context
        wanted: list[ConsentEntry] = []
        for row, patient in consents:
            purposes = row.values.get("consent_purpose")
            if not purposes:
                continue
            at = timezone.make_aware(datetime.combine(row.values["consent_date"], time(0)))
            reference = row.values.get("consent_evidence") or ""
            evidence = f"sha256:{context.checksum}" + (f" {reference}" if reference else "")
            for purpose in purposes:
                for channel in row.values["consent_channel"]:
                    wanted.append(
                        ConsentEntry(
                            patient=patient,
                            purpose=purpose,
                            channel=channel,
                            action=row.values.get("consent_action") or Action.GRANT,
                            source=Source.IMPORT,
                            recorded_by=context.actor
                            if getattr(context.actor, "is_authenticated", False)
                            else None,
                            evidence=evidence[:200],
                            recorded_at=at,
                        )
                    )
        if not wanted:
            return
        ids = {entry.patient.pk for entry in wanted}
        already = set(
            ConsentEntry.objects.filter(patient_id__any=ids, source=Source.IMPORT).values_list(
                "patient_id", "purpose", "channel", "action", "recorded_at"
            )
        )
        stated = set(
            ConsentState.objects.filter(patient_id__any=ids).values_list(
                "patient_id", "purpose", "channel"
            )
        )
        fresh: list[ConsentEntry] = []
        merge: list[ConsentEntry] = []
        for entry in wanted:
            key = (entry.patient.pk, entry.purpose, entry.channel)
            if (*key, entry.action, entry.recorded_at) in already:
                continue
            already.add((*key, entry.action, entry.recorded_at))
            (merge if key in stated else fresh).append(entry)
        # consent_bulk_record takes patients with no state yet; the rest merge one by one.
        context.report.consent_entries += consent_bulk_record(entries=fresh)
        for entry in merge:
            consent_record(
                patient=entry.patient,
                purpose=entry.purpose,
                channel=entry.channel,
                action=entry.action,
                source=entry.source,
                recorded_by=entry.recorded_by,
                evidence=entry.evidence,
                at=entry.recorded_at,
            )
            context.report.consent_entries += 1


# --- records that belong to a patient ----------------------------------------------------------


class RecordHandler(Handler):
    """Visits, prescriptions, procedures, appointments: the patient by chart number, the record
    by its HIS number when the file has one, else by `natural_key`."""

    natural_key: tuple[str, ...] = ()
    day_field = ""  # narrows the natural-key query to the batch's days

    def fields(self, row: Parsed) -> dict[str, Any]:
        """Model field → value for the row (None: leave as stored); may reject the row."""
        return {name: value for name, value in row.values.items() if name != "chart_no"}

    def apply(self, rows: list[Parsed]) -> None:
        context = self.context
        charts = {row.values["chart_no"] for row in rows}
        patients = {
            chart: (pk, uuid)
            for chart, pk, uuid in Patient.objects.filter(chart_no__any=charts).values_list(
                "chart_no", "pk", "uuid"
            )
        }
        ready: list[tuple[Parsed, dict[str, Any]]] = []
        for row in rows:
            found = patients.get(row.values["chart_no"])
            if found is None:
                context.reject(
                    row,
                    "chart_no",
                    row.values["chart_no"],
                    "找不到此病歷號的病人：請先匯入病人資料。",
                )
                continue
            values = self.fields(row)
            if row.errors:
                continue
            values["patient_id"] = found[0]
            ready.append((row, values))
        existing = self._existing([values for _row, values in ready])
        new: list[models.Model] = []
        updates: dict[int, tuple[models.Model, set[str]]] = {}
        seen: dict[Any, models.Model] = {}
        linked: dict[int, Any] = {}
        for row, values in ready:
            key = self._key(values)
            obj = seen.get(key) or existing.get(key)
            label = values.get("external_id") or row.values["chart_no"]
            if obj is not None and key in seen:
                if self._changes(obj, values):
                    context.reject(
                        row,
                        "external_id" if values.get("external_id") else "chart_no",
                        str(label),
                        "同一筆資料在檔案中出現兩次，內容不同。",
                    )
                else:
                    context.report.unchanged += 1
                continue
            linked[values["patient_id"]] = patients[row.values["chart_no"]][1]
            if obj is None:
                obj = self.model(**{k: v for k, v in values.items() if v is not None})
                new.append(obj)
                seen[key] = obj
                context.change(row, str(label), "added")
                continue
            seen[key] = obj
            changed = self._changes(obj, values)
            if not changed:
                context.report.unchanged += 1
                continue
            self.update(obj, values, changed)
            updates[id(obj)] = (obj, changed)
            context.change(row, str(label), "updated", tuple(sorted(changed)))
        insert_new(self.model, new)
        _bulk_update(self.model, list(updates.values()), context.now)
        self.after_write(new, [obj for obj, _changed in updates.values()])
        context.audit_patients(linked)

    def _changes(self, obj: models.Model, values: dict[str, Any]) -> set[str]:
        return _differences(obj, values)

    def update(self, obj: models.Model, values: dict[str, Any], changed: set[str]) -> None:
        for name in changed:
            setattr(obj, name, values[name])

    def after_write(self, added: list[models.Model], updated: list[models.Model]) -> None:
        return None

    def _key(self, values: dict[str, Any]) -> Any:
        if values.get("external_id"):
            return ("external", values["external_id"])
        return tuple(values.get(name) for name in ("patient_id", *self.natural_key))

    def _existing(self, rows: list[dict[str, Any]]) -> dict[Any, models.Model]:
        external = [v["external_id"] for v in rows if v.get("external_id")]
        natural = [v for v in rows if not v.get("external_id")]
        query = Q(external_id__any=external) if external else Q(pk__in=[])
        if natural:
            query |= Q(
                patient_id__any={v["patient_id"] for v in natural},
                **{f"{self.day_field}__any": {v[self.day_field] for v in natural}},
            )
        found: dict[Any, models.Model] = {}
        for obj in self.model._default_manager.filter(query):
            if obj.external_id:  # type: ignore[attr-defined]
                found[("external", obj.external_id)] = obj  # type: ignore[attr-defined]
            key = tuple(getattr(obj, name) for name in ("patient_id", *self.natural_key))
            # A row without a HIS number matches a stored one only by its natural key.
            found.setdefault(key, obj)
        return found


class VisitHandler(RecordHandler):
    model = Visit
    natural_key = ("visited_on", "department", "doctor")
    day_field = "visited_on"


class PrescriptionHandler(RecordHandler):
    model = Prescription
    natural_key = ("start_date", "drug")
    day_field = "start_date"

    def after_write(self, added: list[models.Model], updated: list[models.Model]) -> None:
        windows = [
            RefillWindow(prescription=p, number=number, opens_on=opens, closes_on=closes)  # type: ignore[misc]
            for p in added
            for number, opens, closes in p.refill_windows_due()  # type: ignore[attr-defined]
        ]
        RefillWindow.objects.bulk_create(windows, batch_size=BATCH)
        for prescription in updated:  # rare: a corrected start, supply or refill count
            prescription_sync_refills(prescription=prescription)  # type: ignore[arg-type]


def _aware(day: date, at: time | None) -> datetime:
    return timezone.make_aware(datetime.combine(day, at or time(0)))


class ProcedureHandler(RecordHandler):
    model = Procedure
    natural_key = ("performed_at", "procedure_type")
    day_field = "performed_at"

    def fields(self, row: Parsed) -> dict[str, Any]:
        values = super().fields(row)
        for name in ("performed_at", "discharged_at"):
            if values.get(name):
                values[name] = _aware(*values[name])
        if values.get("discharged_at") and values["discharged_at"] < values["performed_at"]:
            self.context.reject(row, "discharged_at", "", "出院時間不能早於處置時間。")
        return values


class AppointmentHandler(RecordHandler):
    model = Appointment
    natural_key = ()  # the HIS booking number is required

    def fields(self, row: Parsed) -> dict[str, Any]:
        values = super().fields(row)
        context = self.context
        day, at = values.pop("starts_at")
        extra = values.pop("time", None)
        at = extra or at
        if at is None:
            context.reject(row, "starts_at", "", "預約需要時間（例如 09:30），請加上時間或時段欄。")
            return values
        values["starts_at"] = _aware(day, at)
        context.days.add(day)
        return values

    def _changes(self, obj: models.Model, values: dict[str, Any]) -> set[str]:
        changed = _differences(obj, {k: v for k, v in values.items() if k != "status"})
        # The HIS's cancellation applies; its "booked" never undoes a confirmation, an
        # attendance or a cancellation made here.
        if values.get("status") == Appointment.Status.CANCELLED and obj.status in LIVE:  # type: ignore[attr-defined]
            changed.add("status")
        return changed

    def update(self, obj: models.Model, values: dict[str, Any], changed: set[str]) -> None:
        super().update(obj, values, changed)
        appointment: Appointment = obj  # type: ignore[assignment]
        if "starts_at" in changed and appointment.status == Appointment.Status.CONFIRMED:
            # A confirmation was for the old time: the desk and the reminders ask again.
            appointment.status = Appointment.Status.BOOKED
            appointment.confirmed_via, appointment.confirmed_at = "", None
            changed.update({"status", "confirmed_via", "confirmed_at"})


HANDLERS: dict[str, type[Handler]] = {
    ImportKind.PATIENTS: PatientHandler,
    ImportKind.VISITS: VisitHandler,
    ImportKind.PRESCRIPTIONS: PrescriptionHandler,
    ImportKind.PROCEDURES: ProcedureHandler,
    ImportKind.APPOINTMENTS: AppointmentHandler,
}


def _cancel_vanished(context: Context) -> None:
    """A full-day feed is the HIS's whole list for its days: a booking of ours from the HIS on
    one of those days that the file no longer has was cancelled there. Hand-made bookings (no
    HIS number) are left alone."""
    if not getattr(settings, "IMPORT_CANCEL_VANISHED_APPOINTMENTS", True) or not context.days:
        return
    if context.unreadable_ids:
        context.report.note = "有預約編號無法判讀的列，未取消消失的預約。"
        return
    cancelled = 0
    for day in sorted(context.days):
        start = _aware(day, None)
        vanished = [
            pk
            for pk, external_id in Appointment.objects.filter(
                starts_at__gte=start,
                starts_at__lt=_aware(day + timedelta(days=1), None),
                status__in=LIVE,
                external_id__isnull=False,
            ).values_list("pk", "external_id")
            if external_id not in context.seen_ids
        ]
        for offset in range(0, len(vanished), BATCH):
            cancelled += Appointment.objects.filter(
                pk__in=vanished[offset : offset + BATCH]
            ).update(status=Appointment.Status.CANCELLED, updated_at=context.now)
    context.report.cancelled = cancelled


@contextmanager
def _phone_parse_cache() -> Iterator[None]:
    """Parse each phone number once per run instead of seven times.

    Saving one patient parses its number in the cell parser, the field's normalisation, the
    SMS flag and the blind index: libphonenumber's parse was most of an import's time. The
    cached parser is the same pure function (text and region in, number out), so other threads
    using it meanwhile get the same answers; overlapping imports share one, and the last to
    finish puts the plain parser back.
    """
    with _PHONE_CACHE_LOCK:
        if _PHONE_CACHE["depth"] == 0:
            _PHONE_CACHE["original"] = normalise._parse
            normalise._parse = _cached_parser(normalise._parse)  # type: ignore[assignment]
        _PHONE_CACHE["depth"] += 1
    try:
        yield
    finally:
        with _PHONE_CACHE_LOCK:
            _PHONE_CACHE["depth"] -= 1
            if _PHONE_CACHE["depth"] == 0:
                normalise._parse = _PHONE_CACHE.pop("original")


_PHONE_CACHE_LOCK = threading.Lock()
_PHONE_CACHE: dict[str, Any] = {"depth": 0}


def _cached_parser(
    original: Callable[[str], phonenumbers.PhoneNumber | None],
) -> Callable[[str], phonenumbers.PhoneNumber | None]:
    cached = lru_cache(maxsize=1024)(original)
    by_e164: dict[str, phonenumbers.PhoneNumber] = {}

    def parse(raw: str) -> phonenumbers.PhoneNumber | None:
        # The cell says "0912-345-678", the fields then parse the "+886912345678" stored:
        # the second parse is answered from the first.
        number = by_e164.get(raw) or cached(raw)
        if number is not None and not number.extension:
            if len(by_e164) > 4096:
                by_e164.clear()
            e164 = f"+{number.country_code}{phonenumbers.national_significant_number(number)}"
            by_e164[e164] = number
        return number

    return parse


# --- around the run --------------------------------------------------------------------------


@contextmanager
def _rejects_writer(
    path: str | Path | None, headers: list[str]
) -> Iterator[Callable[[Parsed], None]]:
    if path is None:
        yield lambda row: None
        return
    handle: IO[str]
    # UTF-8 with a BOM so Excel shows the Chinese; cells a spreadsheet would run as formulas are
    # neutralised (and read back as text by the next import).
    with Path(path).open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*headers, REASON_COLUMN])

        def write(row: Parsed) -> None:
            reasons = "；".join(
                f"{e.column}：{e.reason}" if e.column else e.reason for e in row.errors
            )
            padded = [*row.cells, *[""] * (len(headers) - len(row.cells))]
            writer.writerow([_safe(cell) for cell in padded] + [reasons])

        yield write


def _safe(cell: str) -> str:
    cleaned = "".join(ch for ch in cell if ch in "\n\t" or not (ord(ch) < 32 or ord(ch) == 127))
    return cell_neutralise(cleaned)


def _progress(callback: ProgressCallback | None, run: ImportRun | None) -> ProgressCallback:
    # Another connection can write the counter only when the run's row is committed and not
    # held by a transaction of our caller's (it would wait on us while we wait on it); SQLite
    # has a single writer, so there the counter is written at the end only.
    visible = (
        run is not None
        and run.pk is not None
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
    )

    def report(rows: int) -> None:
        if callback is not None:
            callback(rows)
        if run is not None:
            run.progress = rows
            if visible:
                _store_progress(run.pk, rows)

    return report


def _store_progress(run_pk: int, rows: int) -> None:
    """Write the progress counter outside the run's transaction, so a progress page (another
    connection) sees it before the import commits."""

    def write() -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    # Never wait long on the row: a progress figure is not worth a stall.
                    cursor.execute("SET LOCAL lock_timeout = '2s'")
                ImportRun.objects.filter(pk=run_pk).update(progress=rows)
        except DatabaseError:
            pass  # the display lags one batch; the import goes on
        finally:
            connections.close_all()

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()


def _finish_run(
    run: ImportRun,
    *,
    now: datetime,
    report: ImportReport | None = None,
    status: str = "",
    summary: str = "",
) -> None:
    # The wall clock, not `now`: when the run ended is a fact about this run, not an input.
    run.finished_at = timezone.now()
    if report is not None:
        run.status = (
            ImportRun.Status.DONE if report.written or report.dry_run else ImportRun.Status.REJECTED
        )
        run.encoding = report.encoding
        run.rows_total, run.progress = report.rows_total, report.rows_total
        run.added, run.updated, run.unchanged = report.added, report.updated, report.unchanged
        run.rejected, run.cancelled = report.rejected, report.cancelled
        run.summary = report.summary()[:500]
        run.errors = [
            {"row": e.row, "column": e.column, "value": e.value, "reason": e.reason}
            for e in report.errors[:200]
        ]
        run.rejects_file = report.rejects_path[:500]
    else:
        run.status, run.summary = status, summary[:500]
    run.save()
