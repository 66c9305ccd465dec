"""Staff lists out as CSV or XLSX: the columns and rows the admin list shows, nothing more.

One exporter for every list (patients, appointments, tasks, messages), mixed into its admin as
two actions. With "select all" the action gets the whole filtered, searched list; otherwise the
rows ticked. What goes out is what the list shows the user: the admin's `list_display` for that
request, labels and choice labels in the user's language, times in the clinic's zone. Only those
columns are read, so only those encrypted fields are decrypted; blind indexes and ciphertext are
never columns (and are deferred, so not even fetched).

Spreadsheets run formulas: a cell starting with = + - @ or a tab or carriage return gets a
leading apostrophe (OWASP's advice against CSV injection), in XLSX too, where the cell is also
typed as text. CSV is UTF-8 with a byte-order mark, without which Excel reads Chinese as cp950.
Every export is audited (EXPORT, with each patient in it) before the first byte is sent.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import html
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import label_for_field, lookup_field
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Model, QuerySet
from django.http import FileResponse, HttpRequest, StreamingHttpResponse
from django.utils import timezone, translation
from django.utils.html import strip_tags
from django.utils.http import content_disposition_header
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from openpyxl import Workbook  # type: ignore[import-untyped]  # no types-openpyxl installed
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # type: ignore[import-untyped]

from clinic_crm.fields import BlindIndexField, EncryptedTextField

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin[Any]
else:
    _AdminBase = object

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 2000  # rows fetched at a time: never the whole list in memory

Cell = str | int | Decimal


class ExportFormat(enum.Enum):
    CSV = "csv"
    XLSX = "xlsx"


@dataclass(frozen=True)
class Column:
    name: str  # a list_display entry
    label: str


def cell_neutralise(value: str) -> str:
    """`value` made safe to open in a spreadsheet: a would-be formula becomes text."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def export_columns(*, model_admin: admin.ModelAdmin[Any], request: HttpRequest) -> list[Column]:
    """The columns of the list as `request`'s user sees it, labelled in the active language."""
    model = model_admin.model
    columns = []
    for name in model_admin.get_list_display(request):
        if not isinstance(name, str) or name == "action_checkbox":
            continue
        field = _model_field(model, name)
        if isinstance(field, BlindIndexField):
            continue  # a keyed digest means nothing to a person, and helps a guesser
        label = str(label_for_field(name, model, model_admin))
        columns.append(Column(name=name, label=capfirst(label)))
    return columns


def export_rows(
    *, model_admin: admin.ModelAdmin[Any], queryset: QuerySet[Any], columns: list[Column]
) -> Iterator[list[Cell]]:
    """Each row of `queryset` as the list shows it, fetched CHUNK rows at a time."""
    for obj in _lean(queryset, columns).iterator(chunk_size=CHUNK):
        yield [_cell(obj, column.name, model_admin) for column in columns]


def export_patient_ids(queryset: QuerySet[Any]) -> list[int]:
    """The patients whose data an export of `queryset` holds."""
    model = queryset.model
    path = "pk" if model._meta.label_lower == "patients.patient" else "patient_id"
    return list(queryset.order_by().values_list(path, flat=True).distinct())


def export_response(
    *,
    model_admin: admin.ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    fmt: ExportFormat,
) -> StreamingHttpResponse | FileResponse:
    """Audit an export of `queryset` by `request.user`, then answer with the file.

    Raises Patient.DoesNotExist (from audit_record) if a row names a patient that is gone.
    """
    from patients.models import AuditEntry
    from patients.services import audit_record

    opts = model_admin.model._meta
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.EXPORT,
        patients=export_patient_ids(queryset),
        path=request.path,
        detail=f"{opts.verbose_name_plural} ({fmt.value.upper()})",
    )
    columns = export_columns(model_admin=model_admin, request=request)
    # The rows are drawn after the view has returned, while the response is sent: keep the
    # request's language for the choice labels then.
    language = translation.get_language()
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    filename = f"{opts.verbose_name_plural}-{stamp}.{fmt.value}"
    rows = _in_language(
        language, export_rows(model_admin=model_admin, queryset=queryset, columns=columns)
    )
    header = [column.label for column in columns]
    return table_response(
        title=str(opts.verbose_name_plural), header=header, rows=rows, fmt=fmt, filename=filename
    )


def table_response(
    *,
    title: str,
    header: list[str],
    rows: Iterable[list[Cell]],
    fmt: ExportFormat,
    filename: str,
) -> StreamingHttpResponse | FileResponse:
    """Any table as a CSV (UTF-8 with BOM, streamed) or XLSX download. The shared writer of
    the admin's exports and the dashboard's tables; string cells are neutralised here (once
    more is harmless: an apostrophe starts no formula). Auditing is the caller's business."""
    safe = ([cell_neutralise(c) if isinstance(c, str) else c for c in row] for row in rows)
    if fmt is ExportFormat.CSV:
        response = StreamingHttpResponse(_csv_lines(header, safe), content_type="text/csv")
        response["Content-Disposition"] = content_disposition_header(True, filename)
        return response
    return FileResponse(
        _xlsx_file(title, header, safe),
        as_attachment=True,
        filename=filename,
        content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )


class ExportAdminMixin(_AdminBase):
    """Adds "export as CSV" and "export as XLSX" to a list admin, for users who may view it.

    Mix it in before the ModelAdmin; the list's own `list_display` decides the columns.
    """

    def has_export_permission(self, request: HttpRequest) -> bool:
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.view_{opts.model_name}")

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # No actions at all (popup, or an admin that switched them off) stays so.
        if self.actions is None or IS_POPUP_VAR in request.GET:
            return actions
        if self.has_export_permission(request):
            for name in ("export_csv", "export_xlsx"):
                action = self.get_action(name)
                if action is not None:
                    actions[name] = action
        return actions

    @admin.action(permissions=["export"], description=_("Export the selected rows (CSV)"))
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> StreamingHttpResponse | FileResponse:
        return export_response(
            model_admin=self, request=request, queryset=queryset, fmt=ExportFormat.CSV
        )

    @admin.action(permissions=["export"], description=_("Export the selected rows (Excel XLSX)"))
    def export_xlsx(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> StreamingHttpResponse | FileResponse:
        return export_response(
            model_admin=self, request=request, queryset=queryset, fmt=ExportFormat.XLSX
        )


# --- cells -------------------------------------------------------------------------------------


def _model_field(model: type[Model], name: str) -> Any:
    try:
        return model._meta.get_field(name)
    except Exception:  # noqa: BLE001 - not a field: an admin method or a model property
        return None


def _lean(queryset: QuerySet[Any], columns: list[Column]) -> QuerySet[Any]:
    """`queryset` without the columns an export never shows: blind indexes, and encrypted
    fields that are not in the list."""
    shown = {column.name for column in columns}
    unshown = [
        field.name
        for field in queryset.model._meta.concrete_fields
        if isinstance(field, BlindIndexField)
        or (isinstance(field, EncryptedTextField) and field.name not in shown)
    ]
    return queryset.defer(*unshown) if unshown else queryset


def _cell(obj: Model, name: str, model_admin: admin.ModelAdmin[Any]) -> Cell:
    try:
        field, attr, value = lookup_field(name, obj, model_admin)
    except ObjectDoesNotExist:
        return ""
    if field is not None and getattr(field, "flatchoices", None) and value not in (None, ""):
        value = dict(field.flatchoices).get(value, value)
    elif getattr(attr, "boolean", False) and value is not None:
        value = bool(value)
    return _plain(value)


def _plain(value: object) -> Cell:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return gettext("Yes") if value else gettext("No")
    if isinstance(value, int | Decimal):
        return value
    if isinstance(value, dt.datetime):
        local = timezone.localtime(value) if timezone.is_aware(value) else value
        return local.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.strftime("%H:%M")
    if isinstance(value, list | tuple):
        return cell_neutralise(", ".join(str(_plain(item)) for item in value))
    # Admin methods may return HTML (a link to the patient): the text of it.
    return cell_neutralise(html.unescape(strip_tags(str(value))))


def _in_language(language: str | None, rows: Iterator[list[Cell]]) -> Iterator[list[Cell]]:
    while True:
        with translation.override(language):
            row = next(rows, None)
        if row is None:
            return
        yield row


# --- files -------------------------------------------------------------------------------------


class _Echo:
    """A file-like object whose write returns what it is given: csv.writer, one row at a time."""

    def write(self, value: str) -> str:
        return value


def _csv_lines(header: list[str], rows: Iterable[list[Cell]]) -> Iterator[bytes]:
    writer = csv.writer(_Echo())
    yield ("\ufeff" + writer.writerow(header)).encode()
    for row in rows:
        yield writer.writerow(row).encode()


def _xlsx_file(title: str, header: list[str], rows: Iterable[list[Cell]]) -> Any:
    """The workbook in a temporary file: openpyxl's write-only mode streams rows to disk."""
    book = Workbook(write_only=True)
    # Excel refuses these in a sheet's name, and more than 31 characters.
    sheet = book.create_sheet(title=re.sub(r"[\\/*?:\[\]]", " ", title)[:31].strip() or "1")
    sheet.append(header)
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, str):
                cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("", value))
                cell.data_type = "s"  # text, never a formula, whatever it starts with
                cells.append(cell)
            else:
                cells.append(value)
        sheet.append(cells)
    handle = tempfile.TemporaryFile()  # noqa: SIM115 - FileResponse closes it when sent
    book.save(handle)
    handle.seek(0)
    return handle
