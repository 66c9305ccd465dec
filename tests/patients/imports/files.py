"""Import fixture files, generated per test: no patient-like data is committed."""

import csv
import datetime as dt
from pathlib import Path

from openpyxl import Workbook

from clinic_crm.validators import ID_LETTER_VALUES, ID_WEIGHTS

PATIENT_HEADERS = ["病歷號", "姓名", "性別", "出生日期", "手機", "身分證字號"]
NOW = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)


def write_csv(path: Path, headers: list[str], rows: list[list[str]], encoding="utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, headers: list[str], rows: list[list[object]]) -> Path:
    book = Workbook()
    sheet = book.active
    sheet.append(headers)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def national_id(n: int, letter: str = "A", sex: str = "1") -> str:
    """A valid national ID with serial `n` (check digit computed)."""
    body = f"{sex}{n % 10_000_000:07d}"
    area = ID_LETTER_VALUES[letter]
    digits = [int(ch) for ch in body]
    total = (
        area // 10 + (area % 10) * 9 + sum(d * w for d, w in zip(digits, ID_WEIGHTS, strict=True))
    )
    return f"{letter}{body}{(10 - total % 10) % 10}"


def patient_row(n: int, *, name: str | None = None, phone: str | None = None) -> list[str]:
    """A made-up patient: chart C{n}, ROC birth date, a local mobile spelling."""
    return [
        f"C{n:06d}",
        name or f"測試{n}號",
        "男" if n % 2 else "女",
        f"{50 + n % 40}/0{1 + n % 9}/1{n % 9}",
        phone or f"09{n // 10000 % 100:02d}-{n // 100 % 100:02d}{n % 10}-{n % 1000:03d}",
        national_id(n),
    ]
