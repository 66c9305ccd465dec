"""FHIR R4 in and out: one patient as a Bundle (also the patient-rights export in a portable
form), and a Bundle read into the CRM, all or nothing."""

from datetime import datetime

from patients.fhir.errors import FhirImportError, Problem
from patients.fhir.export import bundle_export
from patients.fhir.importer import MAX_BUNDLE_BYTES, ImportReport, bundle_import
from patients.models import AuditEntry, Patient
from patients.services import audit_record


def patient_export_fhir(*, patient: Patient, actor, now: datetime, path: str = "") -> str:
    """`patient` as FHIR R4 Bundle JSON; audited as an export, like `patient_export`.

    Built before the audit entry is written, so an export that fails isn't logged as taken.
    """
    document = bundle_export(patient, now=now).model_dump_json(indent=2)
    audit_record(
        actor=actor,
        action=AuditEntry.Action.EXPORT,
        patients=[patient],
        path=path,
        detail="FHIR R4 Bundle",
    )
    return document


__all__ = [
    "MAX_BUNDLE_BYTES",
    "FhirImportError",
    "ImportReport",
    "Problem",
    "bundle_export",
    "bundle_import",
    "patient_export_fhir",
]
