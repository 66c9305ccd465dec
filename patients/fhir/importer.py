"""Read a FHIR R4 Bundle into patients, visits, prescriptions, procedures, appointments and
consent ledger entries: all of it or nothing.

Three passes: the raw JSON's shape (a Bundle of the six resource types we take), the
fhir.resources models (types, dates, required elements), then our reading of each resource into
rows. Only then, in one transaction, patients are matched (chart number, then national ID, then
phone + birth date, as the tabular import does) and each row is created, updated or left alone,
so the same bundle imported twice changes nothing.
"""

import hashlib
import json
import logging
import re
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import pydantic
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone, translation
from fhir.resources.R4B.bundle import Bundle

from consent.models import Action, Channel, ConsentEntry, Source
from consent.services import consent_record
from patients.fhir import codes
from patients.fhir.errors import FhirImportError, Problem
from patients.models import (
    Appointment,
    AuditEntry,
    Frequency,
    Patient,
    Prescription,
    Procedure,
    Visit,
)
from patients.services import audit_record, prescription_sync_refills

logger = logging.getLogger(__name__)

# One patient's record is kilobytes; a whole clinic's export belongs in the tabular import.
MAX_BUNDLE_BYTES = 20 * 1024 * 1024
# Past this many the list stops helping the person reading it.
MAX_PROBLEMS = 100
NUL = re.compile(rb"\x00|\\u0000", re.IGNORECASE)
RESOURCE_TYPES = ("Patient", "Encounter", "MedicationRequest", "Procedure", "Appointment")
ALL_TYPES = (*RESOURCE_TYPES, "Consent")

# The FHIR element each model field comes from, to name it in a validation message.
ELEMENTS: dict[str, dict[str, str]] = {
    "Patient": {
        "chart_no": "identifier(MR)",
        "national_id": "identifier(http://www.moi.gov.tw)",
        "name": "name",
        "sex": "gender",
        "birth_date": "birthDate",
        "phone": "telecom(phone)",
        "email": "telecom(email)",
        "line_user_id": "telecom(other)",
        "preferred_language": "communication",
    },
    "Encounter": {
        "visited_on": "period.start",
        "department": "serviceType",
        "doctor": "participant.individual",
        "diagnosis_codes": "reasonCode",
    },
    "MedicationRequest": {
        "drug": "medicationCodeableConcept",
        "dose": "dosageInstruction.text",
        "frequency": "dosageInstruction.timing",
        "dose_times": "dosageInstruction.timing.repeat.timeOfDay",
        "start_date": "dispenseRequest.validityPeriod.start",
        "days_supplied": "dispenseRequest.expectedSupplyDuration",
        "refills": "dispenseRequest.numberOfRepeatsAllowed",
    },
    "Procedure": {
        "procedure_type": "code",
        "performed_at": "performed[x]",
        "discharged_at": "performedPeriod.end",
        "care_plan_key": "followUp",
    },
    "Appointment": {
        "starts_at": "start",
        "department": "serviceType",
        "doctor": "participant.actor(Practitioner)",
        "location": "participant.actor(Location)",
        "bring_notes": "patientInstruction",
        "status": "status",
    },
}
MODELS: dict[str, type[models.Model]] = {
    "Encounter": Visit,
    "MedicationRequest": Prescription,
    "Procedure": Procedure,
    "Appointment": Appointment,
}


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do), counted per resource type."""

    checksum: str
    dry_run: bool
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    # "entry 1 Patient: phone, email": which fields changed, never their values.
    changes: list[str] = field(default_factory=list)


@dataclass
class PatientRow:
    where: str
    fields: dict[str, Any]


@dataclass
class RecordRow:
    key: str  # "entry 3": what other resources' references resolve to
    where: str
    kind: str
    patient_key: str
    # Finds the same record again on a second import (with the patient).
    match: dict[str, Any]
    fields: dict[str, Any]
    uuid: uuidlib.UUID | None = None
    encounter_key: str | None = None
    # The HIS's own number for the record: when given, the record is matched by it alone.
    external_id: str | None = None


@dataclass
class ConsentRow:
    where: str
    patient_key: str
    purpose: str
    channel: str
    action: str
    at: datetime


@dataclass
class Parsed:
    patients: dict[str, PatientRow] = field(default_factory=dict)  # by entry key
    patient_keys: dict[str, str] = field(default_factory=dict)  # reference → entry key
    encounter_keys: dict[str, str] = field(default_factory=dict)
    records: list[RecordRow] = field(default_factory=list)
    consents: list[ConsentRow] = field(default_factory=list)


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, where: str, zh: str, en: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(Problem(where, zh, en))

    def raise_if_any(self) -> None:
        if self.items:
            raise FhirImportError(self.items)


def bundle_import(
    bundle_json: bytes | str, *, now: datetime, actor: Any = None, dry_run: bool = False
) -> ImportReport:
    """Import a FHIR R4 Bundle, all or nothing; a dry run does everything, then rolls it back.

    The patients it touches are audited as imported by `actor` (a user or a command's name).

    Consent resources become ledger entries with source "import" and the bundle's SHA-256 as
    evidence. Raises FhirImportError listing every problem found; nothing is written then.
    """
    raw = bundle_json.encode() if isinstance(bundle_json, str) else bundle_json
    if len(raw) > MAX_BUNDLE_BYTES:
        raise FhirImportError(
            [
                Problem(
                    "Bundle",
                    f"檔案太大，上限 {MAX_BUNDLE_BYTES // 2**20} MB",
                    f"file too large, the limit is {MAX_BUNDLE_BYTES // 2**20} MB",
                )
            ]
        )
    checksum = hashlib.sha256(raw).hexdigest()
    if NUL.search(raw):
        # PostgreSQL refuses NUL in text, and no clinical text needs one.
        raise FhirImportError(
            [Problem("Bundle", "檔案含有 NUL 字元", "the file contains NUL characters")]
        )
    data = _load_json(raw)
    _check_shape(data)
    try:
        bundle = Bundle.model_validate(data)
    except pydantic.ValidationError as exc:
        raise FhirImportError(_model_problems(exc, data)) from None
    except (KeyError, TypeError, ValueError):
        # fhir.resources raises KeyError for an unknown resource type nested in `contained`.
        raise FhirImportError(
            [Problem("Bundle", "不是有效的 FHIR R4 Bundle", "not a valid FHIR R4 Bundle")]
        ) from None
    problems = _Problems()
    parsed = _Reader(problems).read(bundle)
    problems.raise_if_any()
    report = ImportReport(checksum=checksum, dry_run=dry_run)
    with transaction.atomic():
        _Writer(parsed, report, problems, checksum=checksum, now=now, actor=actor).write()
        # Raising inside the block rolls back whatever the writer did before the problem.
        problems.raise_if_any()
        if dry_run:
            transaction.set_rollback(True)
    logger.info(
        "FHIR bundle %s%s: created %s, updated %s, unchanged %s",
        checksum[:12],
        " (dry run)" if dry_run else "",
        dict(report.created),
        dict(report.updated),
        dict(report.unchanged),
    )
    return report


def _load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        problem = Problem("Bundle", "不是 UTF-8 編碼的 JSON 檔", "not UTF-8 encoded JSON")
    except json.JSONDecodeError as exc:
        problem = Problem(
            "Bundle",
            f"不是 JSON 檔（第 {exc.lineno} 行第 {exc.colno} 欄）",
            f"not JSON (line {exc.lineno}, column {exc.colno})",
        )
    except RecursionError:
        problem = Problem("Bundle", "JSON 巢狀層次太深", "JSON nested too deeply")
    raise FhirImportError([problem])


def _check_shape(data: Any) -> None:
    """The raw JSON is a Bundle whose entries are resources of the types we take."""
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise FhirImportError(
            [
                Problem(
                    "Bundle",
                    "不是 FHIR Bundle（resourceType 應為 Bundle）",
                    "not a FHIR Bundle (resourceType must be Bundle)",
                )
            ]
        )
    entries = data.get("entry", [])
    problems = _Problems()
    if not isinstance(entries, list):
        problems.add("Bundle.entry", "應為清單", "must be a list")
        problems.raise_if_any()
    for number, entry in enumerate(entries, start=1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            problems.add(f"entry {number}", "沒有資源內容", "has no resource")
            continue
        kind = resource.get("resourceType")
        if kind not in ALL_TYPES:
            shown = str(kind)[:40]
            problems.add(
                f"entry {number}",
                f"不支援的資源類型 {shown}（可匯入：{'、'.join(ALL_TYPES)}）",
                f"unsupported resourceType {shown} (accepted: {', '.join(ALL_TYPES)})",
            )
    problems.raise_if_any()


MODEL_ERRORS = {
    "missing": ("必填欄位缺少", "required element missing"),
    "extra_forbidden": ("FHIR R4 沒有這個欄位", "not an element of this resource in FHIR R4"),
}


def _model_problems(exc: pydantic.ValidationError, data: dict[str, Any]) -> list[Problem]:
    """fhir.resources' errors, located by entry number and element, without the input value."""
    problems = []
    for error in exc.errors()[:MAX_PROBLEMS]:
        # pydantic's own steps ("root", "function-after[...]") mean nothing to a reader.
        loc = [
            part
            for part in error["loc"]
            if isinstance(part, int) or ("[" not in str(part) and part != "root")
        ]
        if len(loc) >= 3 and loc[0] == "entry" and isinstance(loc[1], int):
            kind = data["entry"][loc[1]]["resource"].get("resourceType")
            where = f"entry {loc[1] + 1} {kind}{_fhir_path(loc[3:])}"
        else:
            where = f"Bundle{_fhir_path(loc)}"
        message = str(error["msg"])
        if error["type"] in MODEL_ERRORS:
            zh, en = MODEL_ERRORS[error["type"]]
        elif "DateTime" in message:
            zh, en = "日期時間格式不正確（需含時區，如 2026-01-05T09:00:00+08:00）", message
        elif "Date" in message or "date" in error["type"]:
            zh, en = "日期格式不正確（如 2026-01-05）", message
        else:
            zh, en = "值不符合 FHIR R4 格式", message
        problems.append(Problem(where, zh, en))
    return problems


def _fhir_path(parts: list[Any]) -> str:
    """.identifier[0].system, as FHIRPath writes it."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


def _text(concept: Any) -> str:
    """A CodeableConcept's words: its text, or its first coding's display or code."""
    if concept is None:
        return ""
    if concept.text:
        return str(concept.text).strip()
    for coding in concept.coding or []:
        if coding.display or coding.code:
            return str(coding.display or coding.code).strip()
    return ""


def _codes(concept: Any, system: str) -> list[str]:
    if concept is None:
        return []
    return [str(c.code) for c in concept.coding or [] if c.system == system and c.code]


class _Reader:
    """Turns validated resources into rows, noting every problem instead of stopping."""

    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.parsed = Parsed()

    def problem(self, where: str, zh: str, en: str) -> None:
        self.problems.add(where, zh, en)

    def read(self, bundle: Bundle) -> Parsed:
        entries = list(enumerate(bundle.entry or [], start=1))
        # Patients and encounters first: other resources refer to them.
        for number, entry in entries:
            resource: Any = entry.resource  # every entry has one: _check_shape saw to it
            kind = resource.get_resource_type()
            refs = [str(entry.fullUrl)] if entry.fullUrl else []
            if resource.id:
                refs.append(f"{kind}/{resource.id}")
            targets = {"Patient": self.parsed.patient_keys, "Encounter": self.parsed.encounter_keys}
            for ref in refs:
                targets.get(kind, {})[ref] = f"entry {number}"
        for number, entry in entries:
            resource = entry.resource
            kind = resource.get_resource_type()
            where = f"entry {number} {kind}"
            before = len(self.parsed.records)
            getattr(self, f"_{kind.lower()}")(f"entry {number}", where, resource)
            if len(self.parsed.records) > before:
                self.parsed.records[-1].external_id = _his_number(resource)
        return self.parsed

    def _patient_key(self, where: str, reference: Any) -> str:
        ref = reference.reference if reference is not None else None
        key = self.parsed.patient_keys.get(str(ref)) if ref else None
        if key is None:
            self.problem(
                where, "未指向本檔中的 Patient 資源", "does not refer to a Patient in this bundle"
            )
            return ""
        return key

    def _patient(self, key: str, where: str, resource: Any) -> None:
        fields: dict[str, Any] = {}
        for identifier in resource.identifier or []:
            system = identifier.system or ""
            if system == codes.NATIONAL_ID_SYSTEM:
                fields["national_id"] = identifier.value or ""
            elif system == codes.chart_no_system():
                fields["chart_no"] = identifier.value or ""
            else:
                self.problem(
                    f"{where}.identifier",
                    f"不認得的識別碼系統 {system[:100]}：病歷號用 {codes.chart_no_system()}"
                    f"（設定 FHIR_CHART_NO_SYSTEM），身分證字號用 {codes.NATIONAL_ID_SYSTEM}",
                    f"unknown identifier system {system[:100]}: chart numbers use "
                    f"{codes.chart_no_system()} (setting FHIR_CHART_NO_SYSTEM), national IDs "
                    f"{codes.NATIONAL_ID_SYSTEM}",
                )
        names = resource.name or []
        if names:
            chosen = next((n for n in names if n.use == "official"), None) or names[0]
            if chosen.text:
                fields["name"] = str(chosen.text).strip()
            else:
                family, given = chosen.family or "", " ".join(chosen.given or [])
                # A Chinese name is family name then given name, unspaced.
                joiner = "" if family and not family.isascii() else " "
                fields["name"] = joiner.join(part for part in (family, given) if part)
        if resource.gender in codes.SEX:
            fields["sex"] = codes.SEX[resource.gender]
        elif resource.gender:
            self.problem(
                f"{where}.gender",
                "需為 male、female、other 或 unknown",
                "must be male, female, other or unknown",
            )
        if resource.birthDate is not None:
            if isinstance(resource.birthDate, date):
                fields["birth_date"] = resource.birthDate
            else:
                self.problem(f"{where}.birthDate", "需要完整的出生日期", "needs a full birth date")
        self._telecom(where, resource, fields)
        for communication in resource.communication or []:
            tags = _codes(communication.language, codes.BCP47)
            language = codes.language_from(tags[0]) if tags else None
            if language is None:
                self.problem(
                    f"{where}.communication.language",
                    "只支援中文（zh-TW）與英文（en）",
                    "only zh-TW and en are supported",
                )
            elif communication.preferred or "preferred_language" not in fields:
                fields["preferred_language"] = language
        self.parsed.patients[key] = PatientRow(where=where, fields=fields)

    def _telecom(self, where: str, resource: Any, fields: dict[str, Any]) -> None:
        phones = [t for t in resource.telecom or [] if t.system in ("phone", "sms") and t.value]
        if phones:
            phones.sort(key=lambda t: t.use != "mobile")  # a mobile number first: it gets SMS
            fields["phone"] = phones[0].value
        for contact in resource.telecom or []:
            if contact.system == "email" and contact.value:
                fields["email"] = contact.value
            elif contact.system == "other" and contact.value:
                # A LINE user id is the one "other" address we keep (U + 32 hex digits).
                if str(contact.value).startswith("U") and len(contact.value) == 33:
                    fields["line_user_id"] = contact.value
                else:
                    self.problem(
                        f"{where}.telecom",
                        "system 為 other 的聯絡方式只接受 LINE 使用者 ID",
                        "a contact point of system other must be a LINE user id",
                    )

    def _encounter(self, key: str, where: str, resource: Any) -> None:
        if resource.status in ("cancelled", "entered-in-error"):
            self.problem(
                f"{where}.status", "已取消的就診不匯入", "cancelled encounters are not imported"
            )
        patient_key = self._patient_key(f"{where}.subject", resource.subject)
        start = resource.period.start if resource.period else None
        visited_on = _local_date(start)
        if visited_on is None:
            self.problem(f"{where}.period.start", "需要就診日期", "needs the visit date")
        doctor = ""
        for participant in resource.participant or []:
            if participant.individual is not None and participant.individual.display:
                doctor = str(participant.individual.display).strip()
                break
        diagnoses: list[str] = []
        for number, reason in enumerate(resource.reasonCode or [], start=1):
            found = [
                str(c.code).strip()
                for c in reason.coding or []
                if c.code and (c.system or "").startswith(codes.ICD10CM_PREFIXES)
            ]
            if not found:
                self.problem(
                    f"{where}.reasonCode[{number}]",
                    f"診斷需以 ICD-10-CM 編碼（{codes.ICD10CM}）",
                    f"diagnoses must be coded in ICD-10-CM ({codes.ICD10CM})",
                )
            diagnoses.extend(found[:1])
        visit_uuid = None
        for identifier in resource.identifier or []:
            if identifier.system == codes.URI_SYSTEM and str(identifier.value).startswith(
                "urn:uuid:"
            ):
                try:
                    visit_uuid = uuidlib.UUID(str(identifier.value)[9:])
                except ValueError:
                    self.problem(f"{where}.identifier", "UUID 格式不正確", "malformed UUID")
        department = _text(resource.serviceType)
        self.parsed.records.append(
            RecordRow(
                key=key,
                where=where,
                kind="Encounter",
                patient_key=patient_key,
                match={"visited_on": visited_on, "department": department, "doctor": doctor},
                fields={"diagnosis_codes": ", ".join(diagnoses)},
                uuid=visit_uuid,
            )
        )

    def _medicationrequest(self, key: str, where: str, resource: Any) -> None:
        if resource.status in ("cancelled", "entered-in-error", "draft"):
            self.problem(
                f"{where}.status",
                "已取消或草稿的處方不匯入",
                "cancelled or draft prescriptions are not imported",
            )
        patient_key = self._patient_key(f"{where}.subject", resource.subject)
        drug = _text(resource.medicationCodeableConcept)
        if not drug:
            self.problem(
                f"{where}.medicationCodeableConcept",
                "需要藥品名稱",
                "needs the drug's name (medicationCodeableConcept)",
            )
        dosages = resource.dosageInstruction or []
        dose, frequency, dose_times = "", "", []
        if not dosages:
            self.problem(f"{where}.dosageInstruction", "需要用法", "needs a dosage instruction")
        else:
            dosage = dosages[0]
            dose = str(dosage.text or "").strip()
            frequency = self._frequency(where, dosage)
            repeat = dosage.timing.repeat if dosage.timing else None
            times = (repeat.timeOfDay if repeat else None) or []
            if any(t is None for t in times):  # JSON null in the list: fhir.resources lets it by
                self.problem(
                    f"{where}.dosageInstruction[0].timing.repeat.timeOfDay",
                    "用藥時間不可空白",
                    "a time of day is empty",
                )
            dose_times = [t.strftime("%H:%M") for t in times if t is not None]
        dispense = resource.dispenseRequest
        supply = dispense.expectedSupplyDuration if dispense else None
        days = None
        if supply is not None and supply.value is not None and supply.code in ("d", None):
            days = int(supply.value)
        if days is None:
            self.problem(
                f"{where}.dispenseRequest.expectedSupplyDuration",
                "需要給藥天數（單位 d）",
                "needs the days supplied (unit d)",
            )
        validity = dispense.validityPeriod if dispense else None
        start_date = _local_date(validity.start if validity else None) or _local_date(
            resource.authoredOn
        )
        if start_date is None:
            self.problem(
                f"{where}.dispenseRequest.validityPeriod.start",
                "需要處方開始日期",
                "needs the start date (validityPeriod.start or authoredOn)",
            )
        encounter_key = None
        if resource.encounter is not None and resource.encounter.reference:
            encounter_key = self.parsed.encounter_keys.get(str(resource.encounter.reference))
            if encounter_key is None:
                self.problem(
                    f"{where}.encounter",
                    "未指向本檔中的 Encounter 資源",
                    "does not refer to an Encounter in this bundle",
                )
        self.parsed.records.append(
            RecordRow(
                key=key,
                where=where,
                kind="MedicationRequest",
                patient_key=patient_key,
                match={"drug": drug, "start_date": start_date},
                fields={
                    "dose": dose,
                    "frequency": frequency,
                    "dose_times": dose_times,
                    "days_supplied": days,
                    "refills": (dispense.numberOfRepeatsAllowed if dispense else None) or 0,
                },
                encounter_key=encounter_key,
            )
        )

    def _frequency(self, where: str, dosage: Any) -> str:
        if dosage.asNeededBoolean:
            return Frequency.PRN
        timing = dosage.timing
        if timing is not None and timing.repeat is not None and "HS" in (timing.repeat.when or []):
            return Frequency.HS
        for coding in (timing.code.coding if timing and timing.code else None) or []:
            if str(coding.code).upper() in Frequency.values:
                return str(coding.code).upper()
        self.problem(
            f"{where}.dosageInstruction.timing",
            "無法辨識頻率（QD、BID、TID、QID、HS 或需要時）",
            "frequency not recognised (QD, BID, TID, QID, HS or as needed)",
        )
        return ""

    def _procedure(self, key: str, where: str, resource: Any) -> None:
        if resource.status in ("not-done", "entered-in-error", "preparation"):
            self.problem(
                f"{where}.status", "只匯入已執行的處置", "only performed procedures are imported"
            )
        patient_key = self._patient_key(f"{where}.subject", resource.subject)
        period = resource.performedPeriod
        performed = resource.performedDateTime or (period.start if period else None)
        discharged = period.end if period else None
        for element, value in (("performed[x]", performed), ("performedPeriod.end", discharged)):
            if value is not None and not isinstance(value, datetime):
                self.problem(
                    f"{where}.{element}",
                    "需要日期與時間（含時區）",
                    "needs a date and time with a time zone",
                )
        if performed is None:
            self.problem(f"{where}.performed[x]", "需要處置時間", "needs the time performed")
        care_plan = ""
        for follow_up in resource.followUp or []:
            found = _codes(follow_up, codes.CARE_PLAN_SYSTEM)
            care_plan = found[0] if found else care_plan
        self.parsed.records.append(
            RecordRow(
                key=key,
                where=where,
                kind="Procedure",
                patient_key=patient_key,
                match={"procedure_type": _text(resource.code), "performed_at": performed},
                fields={"discharged_at": discharged, "care_plan_key": care_plan},
            )
        )

    def _appointment(self, key: str, where: str, resource: Any) -> None:
        status = codes.APPOINTMENT_STATUS_IN.get(resource.status)
        if status is None:
            self.problem(
                f"{where}.status",
                f"不支援的預約狀態（可用：{'、'.join(codes.APPOINTMENT_STATUS_IN)}）",
                f"unsupported status (accepted: {', '.join(codes.APPOINTMENT_STATUS_IN)})",
            )
        if not isinstance(resource.start, datetime):
            self.problem(f"{where}.start", "需要預約時間", "needs the start time")
        patient_key, doctor, location = "", "", ""
        for participant in resource.participant or []:
            actor = participant.actor
            if actor is None:
                continue
            if actor.reference and str(actor.reference) in self.parsed.patient_keys:
                patient_key = self.parsed.patient_keys[str(actor.reference)]
            elif actor.display and (
                actor.type == "Practitioner" or str(actor.reference).startswith("Practitioner/")
            ):
                doctor = str(actor.display).strip()
            elif actor.display and (
                actor.type == "Location" or str(actor.reference).startswith("Location/")
            ):
                location = str(actor.display).strip()
        if not patient_key:
            self.problem(
                f"{where}.participant",
                "沒有指向本檔中 Patient 的參與者",
                "no participant refers to a Patient in this bundle",
            )
        department = _text((resource.serviceType or [None])[0]) or _text(
            (resource.specialty or [None])[0]
        )
        self.parsed.records.append(
            RecordRow(
                key=key,
                where=where,
                kind="Appointment",
                patient_key=patient_key,
                match={"starts_at": resource.start, "department": department},
                fields={
                    "doctor": doctor,
                    "location": location,
                    "bring_notes": str(resource.patientInstruction or "").strip(),
                    "status": status,
                },
            )
        )

    def _consent(self, key: str, where: str, resource: Any) -> None:
        # Consent is never inferred: every element that says who agreed to what must be there.
        patient_key = self._patient_key(f"{where}.patient", resource.patient)
        if resource.status != "active":
            self.problem(
                f"{where}.status",
                "只匯入生效中（active）的同意",
                "only active consent is imported",
            )
        provision = resource.provision
        action = {"permit": Action.GRANT, "deny": Action.WITHDRAW}.get(
            str(provision.type) if provision else ""
        )
        if action is None:
            self.problem(f"{where}.provision.type", "需為 permit 或 deny", "must be permit or deny")
        reasons = [
            c.code
            for c in (provision.purpose if provision else None) or []
            if c.system == codes.ACT_REASON
        ]
        purpose = codes.REASON_PURPOSE.get(str(reasons[0])) if len(reasons) == 1 else None
        if purpose is None:
            self.problem(
                f"{where}.provision.purpose",
                f"需要一個用途：{codes.ACT_REASON} 的 TREAT（照護）或 HMARKT（關懷）",
                f"needs one purpose: TREAT (care) or HMARKT (relationship) of {codes.ACT_REASON}",
            )
        channels = [
            ext.valueCode
            for ext in (provision.extension if provision else None) or []
            if ext.url == codes.EXT_CONTACT_CHANNEL
        ]
        channel = channels[0] if len(channels) == 1 else None
        if channel not in Channel.values:
            self.problem(
                f"{where}.provision.extension",
                f"需要一個聯絡管道（{codes.EXT_CONTACT_CHANNEL}：sms、line 或 email）",
                f"needs one channel ({codes.EXT_CONTACT_CHANNEL}: sms, line or email)",
            )
        at = resource.dateTime
        if isinstance(at, date) and not isinstance(at, datetime):
            # A paper form carries a day, not a time: the start of that day in the clinic's
            # zone, as the tabular import records a consent date.
            at = timezone.make_aware(datetime.combine(at, time(0)))
        if not isinstance(at, datetime):
            self.problem(
                f"{where}.dateTime",
                "需要同意的日期與時間（含時區）",
                "needs the date and time consent was given, with a time zone",
            )
        if patient_key and action and purpose and channel in Channel.values:
            self.parsed.consents.append(
                ConsentRow(
                    where=where,
                    patient_key=patient_key,
                    purpose=purpose,
                    channel=str(channel),
                    action=action,
                    at=at,
                )
            )


def _his_number(resource: Any) -> str | None:
    for identifier in resource.identifier or []:
        if identifier.system == codes.HIS_NUMBER_SYSTEM and identifier.value:
            return str(identifier.value).strip()
    return None


def _local_date(value: Any) -> date | None:
    """A FHIR date or dateTime as the clinic's calendar day (None for a partial date)."""
    if isinstance(value, datetime):
        return timezone.localdate(value) if timezone.is_aware(value) else value.date()
    if isinstance(value, date):
        return value
    return None


def _messages(error: ValidationError) -> tuple[str, str]:
    """A Django validation error in zh-Hant and in English."""
    texts = []
    for language in ("zh-hant", "en"):
        with translation.override(language):
            texts.append(" ".join(str(m) for m in error.messages))
    return texts[0], texts[1]


class _Writer:
    """Writes parsed rows in the open transaction, noting problems the database reveals."""

    def __init__(
        self,
        parsed: Parsed,
        report: ImportReport,
        problems: _Problems,
        *,
        checksum: str,
        now: datetime,
        actor: Any,
    ) -> None:
        self.parsed, self.report, self.problems = parsed, report, problems
        self.checksum, self.now, self.actor = checksum, now, actor
        self.patients: dict[str, Patient] = {}
        self.visits: dict[str, Visit] = {}

    def write(self) -> None:
        self._write()
        if self.patients and not self.problems.items:
            audit_record(
                actor=self.actor,
                action=AuditEntry.Action.IMPORT,
                patients=list(self.patients.values()),
                detail=f"FHIR R4 Bundle sha256:{self.checksum}",
            )

    def _write(self) -> None:
        for key, row in self.parsed.patients.items():
            patient = self._patient(row)
            if patient is not None:
                self.patients[key] = patient
        for record in self.parsed.records:
            patient = self.patients.get(record.patient_key)
            if patient is None:
                continue  # its Patient failed; that problem is already listed
            saved = self._record(record, patient)
            if isinstance(saved, Visit):
                self.visits[record.key] = saved
        for consent in sorted(self.parsed.consents, key=lambda c: c.at):
            patient = self.patients.get(consent.patient_key)
            if patient is not None:
                self._consent(consent, patient)

    def _validation_problem(self, where: str, kind: str, error: ValidationError) -> None:
        # error_dict keeps the lazy messages, so each can still be rendered in both languages.
        details = error.error_dict if hasattr(error, "error_dict") else {"": [error]}
        for name, errors in details.items():
            element = ELEMENTS.get(kind, {}).get(name, name)
            zh, en = _messages(ValidationError(errors))
            self.problems.add(f"{where}.{element}" if element else where, zh, en)

    def _match(self, row: PatientRow) -> Patient | None:
        fields = row.fields
        chart_no = fields.get("chart_no")
        if chart_no:
            chart_no = Patient._meta.get_field("chart_no").to_python(chart_no)
            found = Patient.objects.filter(chart_no=chart_no).first()
            if found is not None:
                return found
        candidate = None
        # A value that normalises to nothing has no digest: it must match nobody, not every
        # patient whose index is empty.
        national_id = Patient.index_of("national_id", fields.get("national_id") or "")
        if national_id:
            candidate = Patient.objects.filter(national_id_bidx=national_id).first()
        phone = Patient.index_of("phone", fields.get("phone") or "")
        if candidate is None and phone and fields.get("birth_date"):
            # Twins share a phone and a birth date: the name must agree too, and a national ID
            # on record that differs means another person (the tabular import's rule).
            same = [
                p
                for p in Patient.objects.filter(phone_bidx=phone, birth_date=fields["birth_date"])[
                    :10
                ]
                if p.name_bidx == Patient.index_of("name", fields.get("name") or "")
                and not (national_id and p.national_id_bidx and p.national_id_bidx != national_id)
            ]
            if len(same) > 1:
                self.problems.add(
                    row.where,
                    "電話與生日符合多位病人，請加上病歷號或身分證字號",
                    "phone and birth date match several patients; add a chart number or ID",
                )
                return None
            candidate = same[0] if same else None
        if candidate is not None and chart_no and candidate.chart_no != chart_no:
            self.problems.add(
                f"{row.where}.identifier",
                "符合的病人已有不同的病歷號，請先確認是否為同一人",
                "the matching patient has another chart number; check it is the same person",
            )
            return None
        return candidate

    def _patient(self, row: PatientRow) -> Patient | None:
        patient = self._match(row)
        if patient is not None and patient in self.patients.values():
            self.problems.add(
                row.where,
                "與本檔中另一筆 Patient 是同一位病人",
                "is the same patient as another entry",
            )
            return None
        if patient is not None and patient.is_erased:
            # Erased at the patient's request: the medical records still come in (they must be
            # kept), the contact data and consent do not come back.
            self.report.unchanged["Patient"] += 1
            self.report.changes.append(
                f"{row.where}: 病人已要求刪除聯絡資料，不還原（erased on request: not restored）"
            )
            return patient
        if patient is None:
            if not row.fields.get("chart_no"):
                self.problems.add(
                    f"{row.where}.identifier",
                    f"新病人需要病歷號（系統 {codes.chart_no_system()}）",
                    f"a new patient needs a chart number (system {codes.chart_no_system()})",
                )
                return None
            patient = Patient(**row.fields)
        return self._save(row.where, "Patient", patient, row.fields)

    def _save(self, where: str, kind: str, obj: Any, fields: dict[str, Any]) -> Any:
        """Validate and save `obj` with `fields` applied; count it created, updated or unchanged."""
        creating = obj.pk is None
        before = {name: getattr(obj, name) for name in fields}
        for name, value in fields.items():
            setattr(obj, name, value)
        try:
            obj.full_clean()
        except ValidationError as error:
            self._validation_problem(where, kind, error)
            return None
        # full_clean stored the normalised values, so a re-import compares like with like.
        changed = [name for name in fields if getattr(obj, name) != before[name]]
        if creating:
            obj.save()
            self.report.created[kind] += 1
        elif changed:
            obj.save()
            self.report.updated[kind] += 1
            elements = [ELEMENTS.get(kind, {}).get(name, name) for name in changed]
            self.report.changes.append(f"{where}: {', '.join(elements)}")
        else:
            self.report.unchanged[kind] += 1
        return obj

    def _record(self, row: RecordRow, patient: Patient) -> Any:
        model = MODELS[row.kind]
        existing = model._default_manager.filter(patient=patient)
        obj: Any = None
        fields = dict(row.fields)
        if row.external_id:
            # Matched by the HIS's number alone, as the tabular import does.
            fields["external_id"] = row.external_id
            obj = model._default_manager.filter(external_id=row.external_id).first()
            if obj is not None and obj.patient_id != patient.pk:
                self.problems.add(
                    f"{row.where}.identifier",
                    "此 HIS 編號已屬於另一位病人的紀錄",
                    "this HIS number belongs to another patient's record",
                )
                return None
        if obj is None and row.uuid is not None:
            obj = existing.filter(uuid=row.uuid).first()
        if obj is None and not row.external_id and None not in row.match.values():
            obj = existing.filter(external_id=None, **row.match).order_by("pk").first()
        if row.kind == "MedicationRequest" and row.encounter_key:
            fields["visit"] = self.visits.get(row.encounter_key)
        if obj is None:
            obj = model(patient=patient, **row.match)
            if row.uuid is not None:
                obj.uuid = row.uuid
        elif row.kind == "Appointment":
            self._appointment_status(obj, row, fields)
        saved = self._save(row.where, row.kind, obj, {**row.match, **fields})
        if isinstance(saved, Prescription):
            prescription_sync_refills(prescription=saved)
        return saved

    @staticmethod
    def _appointment_status(obj: Appointment, row: RecordRow, fields: dict[str, Any]) -> None:
        """The tabular import's rule: "booked" from elsewhere never undoes a confirmation, an
        attendance or a cancellation made here; a cancellation, attendance or no-show applies."""
        if fields["status"] == Appointment.Status.BOOKED and obj.status != fields["status"]:
            del fields["status"]
            if (
                obj.status == Appointment.Status.CONFIRMED
                and obj.starts_at != row.match["starts_at"]
            ):
                # The confirmation was for the old time: the desk and the reminders ask again.
                fields.update(status=Appointment.Status.BOOKED, confirmed_via="", confirmed_at=None)

    def _consent(self, row: ConsentRow, patient: Patient) -> None:
        if patient.is_erased:
            self.report.unchanged["Consent"] += 1
            return
        if row.at > self.now:
            self.problems.add(
                f"{row.where}.dateTime", "同意日期在未來", "consent is dated in the future"
            )
            return
        already = ConsentEntry.objects.filter(
            patient=patient,
            purpose=row.purpose,
            channel=row.channel,
            action=row.action,
            recorded_at=row.at,
        ).exists()
        if already:
            self.report.unchanged["Consent"] += 1
            return
        consent_record(
            patient=patient,
            purpose=row.purpose,
            channel=row.channel,
            action=row.action,
            source=Source.IMPORT,
            evidence=f"sha256:{self.checksum}",
            at=row.at,
        )
        self.report.created["Consent"] += 1
