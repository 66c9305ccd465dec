"""One patient as a FHIR R4 collection Bundle: Patient, Encounter, MedicationRequest, Procedure,
Appointment and Consent resources, built from plain dicts and validated by fhir.resources."""

import uuid
from datetime import date, datetime, timedelta
from typing import Any

from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle

from consent.models import ConsentState
from patients.fhir import codes
from patients.models import Appointment, Language, Patient, Prescription, Procedure, Visit

JSON = dict[str, Any]


def _urn(value: uuid.UUID) -> str:
    return f"urn:uuid:{value}"


def _local_urn(patient: Patient, kind: str, pk: int) -> str:
    """A stable fullUrl for a row that has no UUID of its own (the same on every export)."""
    return _urn(uuid.uuid5(patient.uuid, f"{kind}/{pk}"))


def _his_number(record: Visit | Prescription | Procedure | Appointment) -> list[JSON]:
    if not record.external_id:
        return []
    return [{"system": codes.HIS_NUMBER_SYSTEM, "value": record.external_id}]


def _instant(value: datetime) -> str:
    return timezone.localtime(value).isoformat()


def _patient(patient: Patient) -> JSON:
    identifiers: list[JSON] = [
        {
            "use": "official",
            "type": {"coding": [{"system": codes.V2_0203, "code": codes.CHART_NO_TYPE}]},
            "system": codes.chart_no_system(),
            "value": patient.chart_no,
        }
    ]
    if patient.national_id:
        identifiers.append(
            {
                "use": "official",
                "type": {"coding": [{"system": codes.V2_0203, "code": codes.NATIONAL_ID_TYPE}]},
                "system": codes.NATIONAL_ID_SYSTEM,
                "value": patient.national_id,
            }
        )
    telecom: list[JSON] = []
    if patient.phone:
        use = "mobile" if patient.phone_is_mobile else "home"
        telecom.append({"system": "phone", "value": patient.phone, "use": use})
    if patient.email:
        telecom.append({"system": "email", "value": patient.email})
    if patient.line_user_id:
        # FHIR has no system for a messaging account; a LINE user id is recognised by its form.
        telecom.append({"system": "other", "value": patient.line_user_id})
    resource: JSON = {
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"use": "official", "text": patient.name}],
        "gender": codes.GENDER[Patient.Sex(patient.sex)],
        "communication": [
            {
                "language": {
                    "coding": [
                        {
                            "system": codes.BCP47,
                            "code": codes.LANGUAGE[Language(patient.preferred_language)],
                        }
                    ]
                },
                "preferred": True,
            }
        ],
    }
    if telecom:
        resource["telecom"] = telecom
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    return resource


def _encounter(visit: Visit, subject: JSON) -> JSON:
    resource: JSON = {
        "resourceType": "Encounter",
        "identifier": [
            {"system": codes.URI_SYSTEM, "value": _urn(visit.uuid)},
            *_his_number(visit),
        ],
        "status": "finished",
        "class": {"system": codes.ACT_CODE, "code": "AMB"},
        "serviceType": {"text": visit.department},
        "subject": subject,
        "participant": [
            {
                "type": [{"coding": [{"system": codes.PARTICIPATION, "code": "ATND"}]}],
                "individual": {"type": "Practitioner", "display": visit.doctor},
            }
        ],
        "period": {"start": visit.visited_on.isoformat()},
    }
    diagnoses = [code.strip() for code in visit.diagnosis_codes.split(",") if code.strip()]
    if diagnoses:
        resource["reasonCode"] = [
            {"coding": [{"system": codes.ICD10CM, "code": code}]} for code in diagnoses
        ]
    return resource


def _medication_request(
    prescription: Prescription, subject: JSON, encounter_url: str | None, today: date
) -> JSON:
    last_day = prescription.start_date + timedelta(
        days=prescription.days_supplied * (prescription.refills + 1) - 1
    )
    timing: JSON = {}
    if prescription.frequency in codes.GTS_FREQUENCIES:
        timing["code"] = {"coding": [{"system": codes.GTS, "code": prescription.frequency}]}
    repeat: JSON = {}
    if prescription.frequency == "HS":
        repeat["when"] = ["HS"]
    if prescription.dose_times:
        repeat["timeOfDay"] = [f"{t}:00" for t in prescription.dose_times]
    if repeat:
        timing["repeat"] = repeat
    dosage: JSON = {"text": prescription.dose}
    if timing:
        dosage["timing"] = timing
    if prescription.frequency == "PRN":
        dosage["asNeededBoolean"] = True
    resource: JSON = {
        "resourceType": "MedicationRequest",
        "identifier": _his_number(prescription),
        "status": "completed" if last_day < today else "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": prescription.drug},
        "subject": subject,
        "authoredOn": prescription.start_date.isoformat(),
        "dosageInstruction": [dosage],
        "dispenseRequest": {
            # The validity covers the first supply and every chronic refill (慢箋).
            "validityPeriod": {
                "start": prescription.start_date.isoformat(),
                "end": last_day.isoformat(),
            },
            "numberOfRepeatsAllowed": prescription.refills,
            "expectedSupplyDuration": {
                "value": prescription.days_supplied,
                "unit": "days",
                "system": codes.UCUM,
                "code": "d",
            },
        },
    }
    if encounter_url:
        resource["encounter"] = {"reference": encounter_url}
    return resource


def _procedure(procedure: Procedure, subject: JSON) -> JSON:
    resource: JSON = {
        "resourceType": "Procedure",
        "identifier": _his_number(procedure),
        "status": "completed",
        "code": {"text": procedure.procedure_type},
        "subject": subject,
    }
    if procedure.discharged_at:
        # The discharge ends the procedure's period: post-op rules count from it.
        resource["performedPeriod"] = {
            "start": _instant(procedure.performed_at),
            "end": _instant(procedure.discharged_at),
        }
    else:
        resource["performedDateTime"] = _instant(procedure.performed_at)
    if procedure.care_plan_key:
        resource["followUp"] = [
            {"coding": [{"system": codes.CARE_PLAN_SYSTEM, "code": procedure.care_plan_key}]}
        ]
    return resource


def _appointment(appointment: Appointment, subject: JSON) -> JSON:
    start = _instant(appointment.starts_at)
    participants: list[JSON] = [
        {"actor": subject, "status": "accepted"},
        {
            "type": [{"coding": [{"system": codes.PARTICIPATION, "code": "ATND"}]}],
            "actor": {"type": "Practitioner", "display": appointment.doctor},
            "status": "accepted",
        },
    ]
    if appointment.location:
        participants.append(
            {"actor": {"type": "Location", "display": appointment.location}, "status": "accepted"}
        )
    resource: JSON = {
        "resourceType": "Appointment",
        "identifier": _his_number(appointment),
        "status": codes.APPOINTMENT_STATUS[Appointment.Status(appointment.status)],
        "serviceType": [{"text": appointment.department}],
        # We keep no duration; FHIR wants an end beside a start (app-2), so the end repeats the
        # start: "length not recorded".
        "start": start,
        "end": start,
        "participant": participants,
    }
    if appointment.bring_notes:
        resource["patientInstruction"] = appointment.bring_notes
    return resource


def _consent(state: ConsentState, patient_ref: JSON) -> JSON:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": codes.LOINC, "code": "59284-0"}]}],
        "patient": patient_ref,
        # The date of the ledger entry that made this the current answer.
        "dateTime": _instant(state.entry.recorded_at),
        "provision": {
            "type": "permit" if state.granted else "deny",
            "purpose": [{"system": codes.ACT_REASON, "code": codes.PURPOSE_REASON[state.purpose]}],
            "extension": [{"url": codes.EXT_CONTACT_CHANNEL, "valueCode": state.channel}],
        },
    }


def bundle_export(patient: Patient, *, now: datetime) -> Bundle:
    """Everything the CRM holds that FHIR carries about `patient`, as a validated Bundle.

    Raises pydantic.ValidationError if a stored value can't be expressed in FHIR (a bug here).
    """
    patient_url = _urn(patient.uuid)
    subject = {"reference": patient_url}
    entries: list[JSON] = [{"fullUrl": patient_url, "resource": _patient(patient)}]
    visit_urls: dict[int, str] = {}
    for visit in patient.visits.order_by("visited_on", "id"):
        visit_urls[visit.pk] = _urn(visit.uuid)
        entries.append({"fullUrl": visit_urls[visit.pk], "resource": _encounter(visit, subject)})
    today = timezone.localdate(now)
    for prescription in patient.prescriptions.order_by("start_date", "id"):
        url = visit_urls.get(prescription.visit_id) if prescription.visit_id else None
        entries.append(
            {
                "fullUrl": _local_urn(patient, "MedicationRequest", prescription.pk),
                "resource": _medication_request(prescription, subject, url, today),
            }
        )
    for procedure in patient.procedures.order_by("performed_at", "id"):
        entries.append(
            {
                "fullUrl": _local_urn(patient, "Procedure", procedure.pk),
                "resource": _procedure(procedure, subject),
            }
        )
    for appointment in patient.appointments.order_by("starts_at", "id"):
        entries.append(
            {
                "fullUrl": _local_urn(patient, "Appointment", appointment.pk),
                "resource": _appointment(appointment, subject),
            }
        )
    states = ConsentState.objects.filter(patient=patient).select_related("entry")
    for state in states.order_by("purpose", "channel"):
        entries.append(
            {
                "fullUrl": _local_urn(patient, "Consent", state.pk),
                "resource": _consent(state, subject),
            }
        )
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": _instant(now),
            "entry": entries,
        }
    )
