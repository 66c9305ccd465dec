import re
import unicodedata
from datetime import date

from django.db.models import Q, QuerySet

from clinic_crm.normalise import SOURCE_SEPARATOR, identifier_key
from patients.dates import day_parse
from patients.models import ClinicDay, Patient

# "5678 1960-03-15", "1960/3/15 5678", "5678 49/03/15": four digits and a date, either order.
_PHONE_TAIL_AND_DATE = re.compile(r"^(\d{4})\s+(\S+)$|^(\S+)\s+(\d{4})$")


def phone_tail_birth_split(term: str) -> tuple[str, date] | None:
    """The last four digits of a phone and a birth date in `term`, or None if it isn't one."""
    match = _PHONE_TAIL_AND_DATE.match(unicodedata.normalize("NFKC", term).strip())
    if not match:
        return None
    digits, written = (match[1], match[2]) if match[1] else (match[4], match[3])
    born = day_parse(written)
    return (digits, born) if born else None


def patient_search(term: str, queryset: QuerySet[Patient] | None = None) -> QuerySet[Patient]:
    """Patients whose chart number starts with `term`, or whose full name, phone, e-mail,
    national ID or LINE id equals it, or whose phone ends in and birth date equals the four
    digits and date it holds (encrypted fields match through their blind index)."""
    queryset = Patient.objects.all() if queryset is None else queryset
    term = term.strip()
    if not term:
        return queryset
    match = Q(chart_no__startswith=identifier_key(term))
    for field in ("name", "phone", "email", "national_id", "line_user_id"):
        digest = Patient.index_of(field, term)
        if digest:
            match |= Q(**{f"{field}_bidx": digest})
    if pair := phone_tail_birth_split(term):
        digits, born = pair
        joined = SOURCE_SEPARATOR.join((digits, born.isoformat()))
        match |= Q(phone4_birth_bidx=Patient.index_of("phone4_birth", joined))
    return queryset.filter(match)


def clinic_days_in_year(year: int) -> dict[date, bool]:
    """The clinic's own word on the dates of `year` it departs from its weekly pattern:
    False for a closure, True for a make-up workday. One query."""
    start = date(year, 1, 1)
    rows = ClinicDay.objects.filter(date__gte=start, date__lt=date(year + 1, 1, 1))
    return dict(rows.values_list("date", "open"))


def closure_on(day: date) -> ClinicDay | None:
    """The closure recorded for `day` (a holiday, typhoon day, leave), or None."""
    return ClinicDay.objects.filter(date=day, open=False).first()


def closures_between(start: date, end: date) -> dict[date, ClinicDay]:
    """The closures recorded from `start` to `end` inclusive, by date. One query."""
    rows = ClinicDay.objects.filter(date__gte=start, date__lte=end, open=False)
    return {row.date: row for row in rows}
