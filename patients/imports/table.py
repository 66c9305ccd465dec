"""Reading a HIS export, CSV or XLSX, one row at a time: the file is never loaded whole."""

import codecs
import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from charset_normalizer import from_bytes

# A cell longer than this is a row error, never a crash or a 10 MB string in memory twice over.
# csv's own limit is set a little above it so the reader hands the cell over for us to refuse.
MAX_CELL_CHARS = 10_000
CSV_FIELD_LIMIT = MAX_CELL_CHARS + 1
# Bytes looked at to guess an encoding: enough for a few hundred rows of a HIS export.
SAMPLE_BYTES = 64 * 1024
# Encodings a Taiwanese HIS export comes in. Big5 files are read as CP950, Microsoft's
# superset that every Big5 file in practice is (it adds the characters Big5 lacks, 碁 銹 …).
ENCODINGS = ("utf-8-sig", "utf-8", "cp950")
XLSX = "xlsx"
TOO_LONG = f"儲存格超過 {MAX_CELL_CHARS:,} 個字元，無法匯入。"


class TableError(Exception):
    """The file can't be read as a table at all (not CSV/XLSX, no header, wrong encoding).
    `reason` is in zh-Hant for staff."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Row:
    """One data row: its number as a spreadsheet shows it (the header is row 1), its cells as
    text (ragged: maybe shorter or longer than the header), and a reason when it can't be read
    at all (zh-Hant)."""

    number: int
    cells: list[str]
    error: str | None = None


@dataclass
class Table:
    """A file's header row and its data rows, streamed.

    `rows()` yields each non-blank data row once, as a Row. Close it (or use `with`).
    """

    headers: list[str]
    encoding: str
    _rows: Iterator[Row]
    _closers: list[Any] = field(default_factory=list)

    def rows(self) -> Iterator[Row]:
        return self._rows

    def close(self) -> None:
        for closer in self._closers:
            closer.close()

    def __enter__(self) -> "Table":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect_encoding(sample: bytes) -> str:
    """utf-8-sig, utf-8 or cp950 for a file starting with `sample`; raises TableError."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        # The sample may end inside a character; the incremental decoder allows that.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(sample, cp_isolation=["cp950", "big5", "big5hkscs"]).best()
    if best is not None:
        return "cp950"
    try:
        codecs.getincrementaldecoder("cp950")().decode(sample, final=False)
        return "cp950"
    except UnicodeDecodeError as exc:
        raise TableError("無法判讀檔案的文字編碼：請另存為 UTF-8 或 Big5 的 CSV 檔。") from exc


def _normalise_encoding(name: str) -> str:
    try:
        canonical = codecs.lookup(name).name
    except LookupError as exc:
        raise TableError(f"不支援的文字編碼：{name[:20]}") from exc
    # Big5 is read as CP950 (see ENCODINGS).
    return "cp950" if canonical in ("big5", "cp950", "big5hkscs") else canonical


def read_table(path: str | Path, *, encoding: str | None = None) -> Table:
    """Open `path` (CSV in UTF-8, UTF-8 with BOM or Big5/CP950, or XLSX) as a streamed Table.

    The encoding is detected from the first 64 KB unless given. Raises TableError when the file
    can't be read as a table (reason in zh-Hant).
    """
    path = Path(path)
    with path.open("rb") as probe:
        head = probe.read(SAMPLE_BYTES)
    if head.startswith(b"PK\x03\x04"):
        return _read_xlsx(path)
    chosen = _normalise_encoding(encoding) if encoding else detect_encoding(head)
    if chosen == "utf-8" and head.startswith(codecs.BOM_UTF8):
        chosen = "utf-8-sig"
    handle: IO[str] = path.open(encoding=chosen, errors="strict", newline="")
    _raise_csv_field_limit()
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as exc:
        handle.close()
        raise TableError("檔案的標題列無法讀取：請確認檔案是 CSV 且編碼正確。") from exc
    if not header or not any(cell.strip() for cell in header):
        handle.close()
        raise TableError("檔案沒有標題列。")
    return Table(
        headers=[_header(cell) for cell in header],
        encoding=chosen,
        _rows=_csv_rows(reader),
        _closers=[handle],
    )


def _raise_csv_field_limit() -> None:
    # csv's default (128 KB) raises on a bigger cell and stops the whole file; set it to just
    # above our cap so an oversized cell is read, refused as a row error, and reading goes on.
    # (csv.field_size_limit is process-wide; no other code relies on the default.)
    csv.field_size_limit(max(CSV_FIELD_LIMIT, min(csv.field_size_limit(), sys.maxsize)))


def _header(cell: Any) -> str:
    return "" if cell is None else str(cell).strip().lstrip("\ufeff")


def _csv_rows(reader: Any) -> Iterator[Row]:
    number = 1  # the header; a row's number is what a spreadsheet would show for it
    while True:
        number += 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # A cell over the field limit: csv drops the rest of that line and reads on.
            too_long = "field larger than field limit" in str(exc)
            yield Row(number, [], TOO_LONG if too_long else "此列不是有效的 CSV 格式，無法讀取。")
            continue
        except UnicodeDecodeError as exc:
            raise TableError(
                f"第 {number} 列附近有無法以此編碼讀取的文字：請選擇正確的文字編碼。"
            ) from exc
        if cells and any(cell.strip() for cell in cells):
            yield Row(number, cells)


def _read_xlsx(path: Path) -> Table:
    from openpyxl import load_workbook  # type: ignore[import-untyped]

    try:
        # read_only streams rows from the zip; data_only gives a formula's cached value, never
        # evaluates it (and a formula the HIS wrote as text stays text).
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a damaged file
        raise TableError("無法開啟此 Excel 檔：請確認是 .xlsx 格式。") from exc
    sheet = book.worksheets[0]
    rows = sheet.iter_rows(values_only=True)
    header = next(rows, None)
    if not header or not any(cell not in (None, "") for cell in header):
        book.close()
        raise TableError("檔案沒有標題列。")
    return Table(
        headers=[_header(cell) for cell in header],
        encoding=XLSX,
        _rows=_xlsx_rows(rows),
        _closers=[book],
    )


def _xlsx_rows(rows: Iterator[tuple[Any, ...]]) -> Iterator[Row]:
    for number, row in enumerate(rows, start=2):
        cells = [_xlsx_cell(value) for value in row]
        while cells and cells[-1] == "":
            cells.pop()
        if cells:
            yield Row(number, cells)


def _xlsx_cell(value: Any) -> str:
    import datetime as dt

    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ") if value.time() != dt.time() else value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
