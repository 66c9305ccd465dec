"""A year's closure dates and make-up workdays, pasted as lines or imported from a CSV.

Lines look like `2027-01-01 元旦` or `116/01/01 元旦` (ROC); the note says the kind when it names
one (補班 / 補行上班 → make-up workday, 颱風 → typhoon day, 請假 / 休診 → doctor's leave), else the
kind chosen on the form applies. A CSV is either our own columns (date, note) or the
government's office calendar (政府行政機關辦公日曆表: 西元日期, 星期, 是否放假, 備註), from which
the holidays on weekdays (and named ones on weekends) and the make-up workdays are taken.
"""

import csv
import io
from dataclasses import dataclass
from datetime import date

from django.db import transaction
from django.utils.translation import gettext as _

from patients.dates import day_parse
from patients.models import ClinicDay

KIND_WORDS = [
    (ClinicDay.Kind.WORKDAY, ("補班", "補行上班", "上班", "workday", "make-up")),
    (ClinicDay.Kind.TYPHOON, ("颱風", "typhoon")),
    (ClinicDay.Kind.LEAVE, ("請假", "休診", "leave")),
]
GOVERNMENT_HOLIDAY_COLUMN = "是否放假"
NOTE_LENGTH = ClinicDay._meta.get_field("note").max_length or 100


@dataclass(frozen=True)
class ParsedDay:
    date: date
    kind: str
    note: str


@dataclass(frozen=True)
class ParseResult:
    days: list[ParsedDay]
    errors: list[str]  # for staff, one per refused line, naming the line number


def _kind_of(note: str, default: str) -> str:
    lowered = note.casefold()
    for kind, words in KIND_WORDS:
        if any(word in lowered for word in words):
            return kind
    return default


def _day(date_text: str, note: str, default_kind: str) -> ParsedDay | None:
    day = day_parse(date_text)
    if day is None:
        return None
    note = " ".join(note.split())[:NOTE_LENGTH]
    return ParsedDay(day, _kind_of(note, default_kind), note)


def clinic_days_parse_lines(text: str, *, default_kind: str) -> ParseResult:
    """Days from pasted lines, `DATE [NOTE]` each; blank lines and `#` comments are ignored."""
    days, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        date_text, _sep, note = line.replace(",", " ").replace("\t", " ").partition(" ")
        parsed = _day(date_text, note, default_kind)
        if parsed is None:
            errors.append(
                _("Line %(number)d: %(date)s is not a date.")
                % {
                    "number": number,
                    "date": date_text[:20],
                }
            )
            continue
        days.append(parsed)
    return ParseResult(days, errors)


def _decode(raw: bytes) -> str:
    # Government downloads have come both as UTF-8 (with a BOM) and as Big5 (cp950).
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp950")


def clinic_days_parse_csv(raw: bytes, *, default_kind: str) -> ParseResult:
    """Days from a CSV: our own (date, note) or the government office calendar.

    Raises UnicodeDecodeError if the file is neither UTF-8 nor Big5."""
    rows = [row for row in csv.reader(io.StringIO(_decode(raw))) if any(c.strip() for c in row)]
    if not rows:
        return ParseResult([], [])
    header = [cell.strip() for cell in rows[0]]
    if GOVERNMENT_HOLIDAY_COLUMN in header:
        return _government(rows, header)
    days, errors = [], []
    for number, row in enumerate(rows, start=1):
        parsed = _day(row[0], " ".join(row[1:]), default_kind)
        if parsed is None:
            if number > 1:  # the first row may be a header
                errors.append(
                    _("Line %(number)d: %(date)s is not a date.")
                    % {
                        "number": number,
                        "date": row[0][:20],
                    }
                )
            continue
        days.append(parsed)
    return ParseResult(days, errors)


def _government(rows: list[list[str]], header: list[str]) -> ParseResult:
    off_at = header.index(GOVERNMENT_HOLIDAY_COLUMN)
    note_at = header.index("備註") if "備註" in header else None
    days, errors = [], []
    for number, row in enumerate(rows[1:], start=2):
        day = day_parse(row[0])
        if day is None or len(row) <= off_at:
            errors.append(
                _("Line %(number)d: %(date)s is not a date.")
                % {
                    "number": number,
                    "date": row[0][:20],
                }
            )
            continue
        note = (
            row[note_at].strip()[:NOTE_LENGTH] if note_at is not None and len(row) > note_at else ""
        )
        off = row[off_at].strip() == "2"
        weekend = day.weekday() >= 5
        if off and (not weekend or note):
            days.append(ParsedDay(day, _kind_of(note, ClinicDay.Kind.HOLIDAY), note))
        elif not off and weekend:
            days.append(ParsedDay(day, ClinicDay.Kind.WORKDAY, note or "補行上班"))
    return ParseResult(days, errors)


def clinic_days_save(*, days: list[ParsedDay]) -> tuple[int, int]:
    """Record `days`, replacing what was recorded for the same dates; returns (added, changed).

    All or nothing."""
    added = changed = 0
    with transaction.atomic():
        for parsed in days:
            _row, created = ClinicDay.objects.update_or_create(
                date=parsed.date,
                defaults={
                    "kind": parsed.kind,
                    "note": parsed.note,
                    "open": parsed.kind == ClinicDay.Kind.WORKDAY,
                },
            )
            added += created
            changed += not created
    return added, changed
