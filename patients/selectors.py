from django.db.models import Q, QuerySet

from clinic_crm.normalise import identifier_key
from patients.models import Patient


def patient_search(term: str, queryset: QuerySet[Patient] | None = None) -> QuerySet[Patient]:
    """Patients whose chart number starts with `term`, or whose full name, phone, e-mail or
    national ID equals it (encrypted fields match through their blind index)."""
    queryset = Patient.objects.all() if queryset is None else queryset
    term = term.strip()
    if not term:
        return queryset
    match = Q(chart_no__startswith=identifier_key(term))
    for field in ("name", "phone", "email", "national_id", "line_user_id"):
        digest = Patient.index_of(field, term)
        if digest:
            match |= Q(**{f"{field}_bidx": digest})
    return queryset.filter(match)
