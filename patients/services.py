import json
from collections.abc import Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from clinic_crm.fields import BlindIndexField, EncryptedTextField
from consent.models import Source
from consent.services import consent_withdraw_all
from patients.models import AuditEntry, AuditLink, Patient, Prescription, RefillWindow


@transaction.atomic
def audit_record(
    *,
    actor,
    action: str,
    patients: Iterable[Patient | int],
    path: str = "",
    detail: str = "",
) -> AuditEntry:
    """Write who did what to which patients' data. Call it wherever patient data is shown.

    The entry and its link rows are written in one transaction; `path` and `detail` name the
    page, never what was typed into it (a search term is patient data). Raises
    Patient.DoesNotExist when a patient id matches no patient.
    """
    ids = {p.pk if isinstance(p, Patient) else int(p) for p in patients}
    uuids = dict(Patient._base_manager.filter(pk__in=ids).values_list("pk", "uuid"))
    if len(uuids) != len(ids):
        raise Patient.DoesNotExist(f"no patient with id {sorted(ids - uuids.keys())}")
    user = actor if getattr(actor, "is_authenticated", False) else None
    entry = AuditEntry.objects.create(
        actor=user,
        actor_name=user.get_username() if user else str(actor or "system"),
        action=action,
        path=path[:300],
        detail=detail[:300],
    )
    AuditLink.objects.bulk_create(
        AuditLink(entry=entry, patient_id=pk, patient_uuid=uuid) for pk, uuid in uuids.items()
    )
    return entry


@transaction.atomic
def prescription_sync_refills(*, prescription: Prescription) -> None:
    """Make the refill windows match the prescription, keeping pickups already recorded."""
    due = {number: (opens, closes) for number, opens, closes in prescription.refill_windows_due()}
    prescription.refill_windows.exclude(number__in=due).filter(picked_up_on__isnull=True).delete()
    for number, (opens, closes) in due.items():
        RefillWindow.objects.update_or_create(
            prescription=prescription,
            number=number,
            defaults={"opens_on": opens, "closes_on": closes},
        )


def _row(obj: models.Model) -> dict[str, Any]:
    """Every stored value of `obj`, decrypted; blind indexes are left out (they mean nothing)."""
    row = {}
    for field in obj._meta.concrete_fields:
        if isinstance(field, BlindIndexField):
            continue
        row[field.name] = getattr(obj, field.attname)
    for field in obj._meta.many_to_many:
        row[field.name] = [str(item) for item in getattr(obj, field.name).all()]
    return row


def _accessor(rel: models.ForeignObjectRel) -> str:
    # Only a hidden relation (related_name "+") has none: an export must not skip one silently.
    name = rel.get_accessor_name()
    if name is None:
        raise ValueError(f"{rel} has no accessor")
    return name


def _owned_children(obj: models.Model) -> dict[str, list[dict[str, Any]]]:
    """Rows that belong to `obj` alone (deleted with it), such as a prescription's refills."""
    children = {}
    for rel in obj._meta.related_objects:
        if rel.one_to_many and rel.on_delete is models.CASCADE and rel.related_name != "+":
            accessor = _accessor(rel)
            children[accessor] = [_row(child) for child in getattr(obj, accessor).all()]
    return children


def patient_export(*, patient: Patient, actor, path: str = "") -> str:
    """Everything held about `patient` as a JSON document; the export itself is audited."""
    document: dict[str, Any] = {"exported_at": timezone.now(), "patient": _row(patient)}
    for rel in Patient._meta.related_objects:
        # The audit trail has its own section below, entry by entry, not link row by link row.
        if rel.one_to_many and rel.related_model is not AuditLink:
            accessor = _accessor(rel)
            document[accessor] = [
                {**_row(obj), **_owned_children(obj)} for obj in getattr(patient, accessor).all()
            ]
    document["audit_entries"] = [
        {"at": e.at, "staff": e.actor_name, "action": e.action} for e in patient.audit_entries.all()
    ]
    audit_record(actor=actor, action=AuditEntry.Action.EXPORT, patients=[patient], path=path)
    return json.dumps(document, cls=DjangoJSONEncoder, ensure_ascii=False, indent=2)


ERASED_FIELDS = [
    f.name
    for f in Patient._meta.concrete_fields
    if isinstance(f, EncryptedTextField) and f.name != "name"
]


def _erase_related_texts(patient: Patient) -> None:
    """Blank the texts other apps keep about the patient and flag as erasable (messages sent),
    without patients/ knowing those apps: the flag lives on the field."""
    for rel in Patient._meta.related_objects:
        if not rel.one_to_many:
            continue
        fields = {f.name for f in rel.related_model._meta.concrete_fields}
        names = [
            f.name
            for f in rel.related_model._meta.concrete_fields
            if getattr(f, "erase_with_patient", False)
        ]
        # A blind index of an erased text would still find the patient by it: it goes too.
        names += [f"{name}_bidx" for name in names if f"{name}_bidx" in fields]
        if names:
            rel.related_model._base_manager.filter(**{rel.field.name: patient}).update(
                **{name: "" for name in names}
            )


@transaction.atomic
def patient_erase(*, patient: Patient, actor, path: str = "") -> Patient:
    """Anonymise a patient's contact data and stop all messaging.

    Medical records (visits, prescriptions, procedures, appointments) and the consent ledger
    stay, as the law requires records to be kept; names and addresses to reach the patient go.
    """
    consent_withdraw_all(
        patient=patient,
        source=Source.PATIENT_REQUEST,
        recorded_by=actor if getattr(actor, "is_authenticated", False) else None,
        evidence="erasure request",
    )
    patient.name = f"(erased {patient.chart_no})"
    for name in ERASED_FIELDS:
        setattr(patient, name, "")
    patient.erased_at = timezone.now()
    patient.save()
    _erase_related_texts(patient)
    audit_record(actor=actor, action=AuditEntry.Action.ERASE, patients=[patient], path=path)
    return patient
