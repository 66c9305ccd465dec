"""FHIR R4 in and out: export a patient as a Bundle, import a Bundle all or nothing, round trip."""

import datetime as dt
import hashlib
import json
import logging
import stat
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import transaction

from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose, Source
from patients.fhir import FhirImportError, bundle_export, bundle_import
from patients.models import (
    Appointment,
    AuditEntry,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
)
from patients.services import patient_erase, prescription_sync_refills
from tests.factories import (
    AppointmentFactory,
    PatientFactory,
    PrescriptionFactory,
    ProcedureFactory,
    VisitFactory,
    grant,
    withdraw,
)

pytestmark = pytest.mark.django_db

TPE = ZoneInfo("Asia/Taipei")
NOW = dt.datetime(2026, 3, 10, 9, 0, tzinfo=TPE)
NAME = "林淑芬"
NATIONAL_ID = "A223456781"
MOBILE = "0912-345-678"
EMAIL = "shu.fen@example.test"
LINE_ID = "U" + "0123456789abcdef" * 2
BAD_PHONE = "99999999999999999"


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def make_patient() -> Patient:
    """A synthetic patient with something of every kind the bundle carries."""
    patient = PatientFactory(
        chart_no="F-2001",
        name=NAME,
        sex=Patient.Sex.FEMALE,
        birth_date=dt.date(1958, 11, 2),
        phone=MOBILE,
        email=EMAIL,
        line_user_id=LINE_ID,
        national_id=NATIONAL_ID,
        preferred_language="en",
    )
    first = VisitFactory(
        patient=patient,
        visited_on=dt.date(2026, 1, 5),
        department="家醫科",
        doctor="王醫師",
        diagnosis_codes="I10, E11.9",
    )
    VisitFactory(
        patient=patient, visited_on=dt.date(2026, 2, 2), department="眼科", diagnosis_codes=""
    )
    chronic = PrescriptionFactory(
        patient=patient,
        visit=first,
        drug="Metformin 500mg",
        dose="1 tab",
        frequency="BID",
        dose_times=["08:00", "20:00"],
        start_date=dt.date(2026, 1, 5),
        days_supplied=28,
        refills=2,
    )
    prescription_sync_refills(prescription=chronic)
    PrescriptionFactory(
        patient=patient,
        drug="Acetaminophen 500mg",
        frequency="PRN",
        dose_times=[],
        start_date=dt.date(2025, 12, 1),
        days_supplied=3,
    )
    PrescriptionFactory(
        patient=patient,
        drug="Zolpidem 10mg",
        frequency="HS",
        dose_times=["21:30"],
        start_date=dt.date(2026, 3, 1),
        days_supplied=14,
    )
    ProcedureFactory(
        patient=patient,
        procedure_type="白內障手術",
        performed_at=dt.datetime(2026, 2, 20, 9, 30, tzinfo=TPE),
        discharged_at=dt.datetime(2026, 2, 20, 13, 0, tzinfo=TPE),
        care_plan_key="cataract",
    )
    ProcedureFactory(
        patient=patient,
        procedure_type="大腸鏡",
        performed_at=dt.datetime(2026, 1, 12, 8, 0, tzinfo=TPE),
        discharged_at=None,
        care_plan_key="",
    )
    for day, status in [
        (12, Appointment.Status.BOOKED),
        (13, Appointment.Status.CANCELLED),
        (2, Appointment.Status.ATTENDED),
        (3, Appointment.Status.NO_SHOW),
    ]:
        AppointmentFactory(
            patient=patient,
            starts_at=dt.datetime(2026, 3, day, 10, 30, tzinfo=TPE),
            status=status,
            bring_notes="健保卡" if status == Appointment.Status.BOOKED else "",
        )
    grant(patient, Purpose.CARE, Channel.SMS, at=dt.datetime(2025, 6, 1, 10, 0, tzinfo=TPE))
    grant(
        patient, Purpose.RELATIONSHIP, Channel.EMAIL, at=dt.datetime(2025, 6, 1, 10, 0, tzinfo=TPE)
    )
    withdraw(
        patient, Purpose.RELATIONSHIP, Channel.EMAIL, at=dt.datetime(2025, 9, 9, 9, 9, tzinfo=TPE)
    )
    return patient


def bundle_of(patient: Patient) -> str:
    return bundle_export(patient, now=NOW).model_dump_json()


def comparable(bundle_json: str) -> dict:
    """The bundle without what a server assigns: ids, meta, timestamp, and which UUIDs stand for
    our rows (each becomes its order of first appearance, so references still line up)."""
    labels: dict[str, str] = {}

    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items() if k not in ("id", "meta", "timestamp")}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value.startswith("urn:uuid:"):
            return labels.setdefault(value, f"ref-{len(labels)}")
        return value

    return walk(json.loads(bundle_json))


class _Discard(Exception):
    pass


def exported_then_discarded() -> str:
    """A bundle made from a patient who, afterwards, was never in the database."""
    try:
        with transaction.atomic():
            bundle = bundle_of(make_patient())
            raise _Discard
    except _Discard:
        pass
    assert not Patient.objects.exists()
    return bundle


def resources(bundle_json: str, kind: str) -> list[dict]:
    entries = json.loads(bundle_json)["entry"]
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == kind]


def import_command(path, *args) -> str:
    out = StringIO()
    call_command("import_fhir", str(path), *args, stdout=out)
    return out.getvalue()


def test_export_uses_tw_core_identifiers_and_our_codes():
    # given
    bundle = bundle_of(make_patient())

    # then
    (patient,) = resources(bundle, "Patient")
    assert {
        (i["system"], i["type"]["coding"][0]["code"], i["value"]) for i in patient["identifier"]
    } == {
        ("urn:clinic-crm:chart-no", "MR", "F-2001"),
        ("http://www.moi.gov.tw", "NNxxx", NATIONAL_ID),
    }
    assert patient["telecom"][0] == {"system": "phone", "value": "+886912345678", "use": "mobile"}
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "en"
    encounter = resources(bundle, "Encounter")[0]
    assert [c["coding"][0] for c in encounter["reasonCode"]] == [
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"},
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"},
    ]
    assert encounter["participant"][0]["individual"]["display"] == "王醫師"
    chronic = next(
        r
        for r in resources(bundle, "MedicationRequest")
        if r["medicationCodeableConcept"]["text"] == "Metformin 500mg"
    )
    assert chronic["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] == "BID"
    assert chronic["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
    assert chronic["dispenseRequest"]["validityPeriod"] == {
        "start": "2026-01-05",
        "end": "2026-03-29",
    }
    assert chronic["status"] == "active"
    cataract = resources(bundle, "Procedure")[1]
    assert cataract["performedPeriod"]["end"] == "2026-02-20T13:00:00+08:00"
    assert cataract["followUp"][0]["coding"][0]["code"] == "cataract"
    assert [a["status"] for a in resources(bundle, "Appointment")] == [
        "fulfilled",
        "noshow",
        "booked",
        "cancelled",
    ]
    consents = {
        (c["provision"]["purpose"][0]["code"], c["provision"]["extension"][0]["valueCode"]): (
            c["provision"]["type"],
            c["dateTime"],
        )
        for c in resources(bundle, "Consent")
    }
    assert consents == {
        ("TREAT", "sms"): ("permit", "2025-06-01T10:00:00+08:00"),
        ("HMARKT", "email"): ("deny", "2025-09-09T09:09:00+08:00"),
    }


def test_round_trip_into_an_empty_database_gives_the_same_resources():
    # given: a bundle of a patient the database no longer has
    first = exported_then_discarded()

    # when
    bundle_import(first, now=NOW)
    second = bundle_of(Patient.objects.get())

    # then
    assert comparable(second) == comparable(first)
    chronic = Prescription.objects.get(drug="Metformin 500mg")
    assert chronic.visit == Visit.objects.get(visited_on=dt.date(2026, 1, 5))
    assert RefillWindow.objects.filter(prescription=chronic).count() == 2


def test_importing_the_same_bundle_twice_changes_nothing():
    # given
    bundle = exported_then_discarded()
    bundle_import(bundle, now=NOW)
    counts = [m.objects.count() for m in (Patient, Visit, Prescription, Procedure, Appointment)]
    ledger = ConsentEntry.objects.count()

    # when
    report = bundle_import(bundle, now=NOW)

    # then
    assert not report.created and not report.updated
    assert report.unchanged["Patient"] == 1 and report.unchanged["Appointment"] == 4
    assert [
        m.objects.count() for m in (Patient, Visit, Prescription, Procedure, Appointment)
    ] == counts
    assert ConsentEntry.objects.count() == ledger


def test_importing_a_patients_own_export_over_their_record_changes_nothing():
    # given: the patient confirmed by phone, which FHIR can only call "booked"
    patient = make_patient()
    Appointment.objects.filter(status="booked").update(status=Appointment.Status.CONFIRMED)

    # when
    report = bundle_import(bundle_of(patient), now=NOW)

    # then
    assert not report.created and not report.updated
    assert Appointment.objects.filter(status=Appointment.Status.CONFIRMED).count() == 1
    assert ConsentEntry.objects.filter(source=Source.IMPORT).count() == 0


def test_a_changed_bundle_updates_the_record_and_names_the_changed_elements():
    # given
    patient = make_patient()
    document = json.loads(bundle_of(patient))
    document["entry"][0]["resource"]["telecom"][0]["value"] = "0933-000-111"
    appointment = next(
        e["resource"]
        for e in document["entry"]
        if e["resource"]["resourceType"] == "Appointment" and e["resource"]["status"] == "booked"
    )
    appointment["status"] = "cancelled"

    # when
    report = bundle_import(json.dumps(document), now=NOW)

    # then
    patient.refresh_from_db()
    assert patient.phone == "+886933000111"
    assert report.updated == {"Patient": 1, "Appointment": 1}
    assert any(c.endswith("Patient: telecom(phone)") for c in report.changes)
    assert not any("0933" in c for c in report.changes)
    assert Appointment.objects.filter(status=Appointment.Status.CANCELLED).count() == 2


def test_consent_from_a_bundle_lands_in_the_ledger_with_source_import_and_the_files_checksum(
    tmp_path,
):
    # given
    path = tmp_path / "bundle.json"
    path.write_text(exported_then_discarded(), encoding="utf-8")

    # when
    import_command(path)

    # then
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    entries = ConsentEntry.objects.order_by("recorded_at")
    assert [(e.purpose, e.channel, e.action, e.source, e.evidence) for e in entries] == [
        ("care", "sms", Action.GRANT, Source.IMPORT, f"sha256:{checksum}"),
        ("relationship", "email", Action.WITHDRAW, Source.IMPORT, f"sha256:{checksum}"),
    ]
    assert entries[0].recorded_at == dt.datetime(2025, 6, 1, 10, 0, tzinfo=TPE)
    state = ConsentState.objects.get(purpose="care", channel="sms")
    assert state.granted and state.entry == entries[0]


def test_imported_patients_without_consent_resources_get_no_consent():
    # given
    document = json.loads(exported_then_discarded())
    document["entry"] = [e for e in document["entry"] if e["resource"]["resourceType"] != "Consent"]

    # when
    bundle_import(json.dumps(document), now=NOW)

    # then
    assert Patient.objects.count() == 1
    assert not ConsentEntry.objects.exists() and not ConsentState.objects.exists()


def test_a_bundle_without_chart_number_finds_the_patient_by_phone_and_birth_date():
    # given
    patient = make_patient()
    document = json.loads(bundle_of(patient))
    document["entry"][0]["resource"]["identifier"] = []

    # when
    report = bundle_import(json.dumps(document), now=NOW)

    # then
    assert Patient.objects.count() == 1
    assert report.unchanged["Patient"] == 1


def test_a_bundle_with_another_chart_number_for_a_known_national_id_is_refused():
    # given
    patient = make_patient()
    document = json.loads(bundle_of(patient))
    document["entry"][0]["resource"]["identifier"][0]["value"] = "F-9999"

    # when / then
    with pytest.raises(FhirImportError, match="不同的病歷號"):
        bundle_import(json.dumps(document), now=NOW)
    assert not Patient.objects.filter(chart_no="F-9999").exists()


def test_appointment_statuses_come_in_as_ours():
    # given
    document = json.loads(exported_then_discarded())

    # when
    bundle_import(json.dumps(document), now=NOW)

    # then
    assert sorted(Appointment.objects.values_list("status", flat=True)) == sorted(
        ["booked", "cancelled", "attended", "no_show"]
    )


def test_dry_run_counts_everything_and_writes_nothing(tmp_path):
    # given
    path = tmp_path / "bundle.json"
    path.write_text(exported_then_discarded(), encoding="utf-8")

    # when
    out = import_command(path, "--dry-run")

    # then
    assert "dry run" in out
    assert "Appointment: 新增 4" in out
    assert not Patient.objects.exists() and not ConsentEntry.objects.exists()


def _bundle_with(change) -> str:
    document = json.loads(exported_then_discarded())
    change(document)
    return json.dumps(document)


def _set(path: list, value):
    def change(document):
        target = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _second_patient_with_bad_phone(document):
    # The first patient is fine; the second fails only when the database validates it, after
    # the first was written: the transaction must undo the first too.
    other = json.loads(json.dumps(document["entry"][0]))
    other["fullUrl"] = "urn:uuid:00000000-0000-4000-8000-000000000001"
    other["resource"]["identifier"] = [{"system": "urn:clinic-crm:chart-no", "value": "F-2002"}]
    other["resource"]["telecom"] = [{"system": "phone", "value": BAD_PHONE}]
    document["entry"].append(other)


INVALID = {
    "wrong resource type": (
        _set(["entry", 1, "resource", "resourceType"], "Observation"),
        "entry 2：不支援的資源類型 Observation",
    ),
    "bad date": (
        _set(["entry", 0, "resource", "birthDate"], "1958-02-30"),
        "entry 1 Patient.birthDate：日期格式不正確",
    ),
    "time without zone": (
        _set(["entry", 1, "resource", "period", "start"], "2026-01-05T10:00:00"),
        "entry 2 Encounter.period.start：日期時間格式不正確",
    ),
    "unknown identifier system": (
        _set(["entry", 0, "resource", "identifier", 0, "system"], "https://his.example/mrn"),
        "entry 1 Patient.identifier：不認得的識別碼系統 https://his.example/mrn",
    ),
    "unknown appointment status": (
        lambda d: next(e for e in d["entry"] if e["resource"]["resourceType"] == "Appointment")[
            "resource"
        ].update(status="waitlist"),
        "Appointment.status：不支援的預約狀態",
    ),
    "consent without a date": (
        lambda d: next(e for e in d["entry"] if e["resource"]["resourceType"] == "Consent")[
            "resource"
        ].pop("dateTime"),
        "Consent.dateTime：需要同意的日期與時間",
    ),
    "unknown gender": (
        _set(["entry", 0, "resource", "gender"], "f"),
        "entry 1 Patient.gender：需為 male、female、other 或 unknown",
    ),
    "empty time of day": (
        lambda d: next(
            e
            for e in d["entry"]
            if e["resource"]["resourceType"] == "MedicationRequest"
            and "timeOfDay" in json.dumps(e["resource"])
        )["resource"]["dosageInstruction"][0]["timing"]["repeat"]["timeOfDay"].__setitem__(0, None),
        "timing.repeat.timeOfDay：用藥時間不可空白",
    ),
    "NUL character": (
        _set(["entry", 0, "resource", "name", 0, "text"], "林\x00淑芬"),
        "Bundle：檔案含有 NUL 字元",
    ),
    "second patient fails in the database": (
        _second_patient_with_bad_phone,
        "entry 15 Patient.telecom(phone)：",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_an_invalid_bundle_is_refused_naming_resource_and_element_and_nothing_is_written(
    case, tmp_path
):
    # given
    change, message = INVALID[case]
    path = tmp_path / "bundle.json"
    path.write_text(_bundle_with(change), encoding="utf-8")

    # when
    with pytest.raises(CommandError) as refused:
        import_command(path)

    # then
    assert "未匯入任何資料" in str(refused.value)
    assert message in str(refused.value)
    assert "1958-02-30" not in str(refused.value)  # elements are named, values never shown
    assert not Patient.objects.exists()
    assert not ConsentEntry.objects.exists()


def test_the_error_names_the_element_never_the_value():
    # given
    bundle = _bundle_with(_second_patient_with_bad_phone)

    # when
    with pytest.raises(FhirImportError) as refused:
        bundle_import(bundle, now=NOW)

    # then
    (problem,) = refused.value.problems
    assert problem.where == "entry 15 Patient.telecom(phone)"
    assert problem.zh and problem.en and "9999" not in problem.zh + problem.en


def test_a_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "bundle.json"
    path.write_text('{"resourceType": "Bundle", "entry": [', encoding="utf-8")

    with pytest.raises(CommandError, match="不是 JSON 檔（第 1 行"):
        import_command(path)


def test_a_json_file_that_is_not_a_bundle_is_refused(tmp_path):
    path = tmp_path / "patient.json"
    path.write_text('{"resourceType": "Patient"}', encoding="utf-8")

    with pytest.raises(CommandError, match="不是 FHIR Bundle"):
        import_command(path)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    # given: a limit of 1 kB instead of 20 MB, so the test needn't write 20 MB
    monkeypatch.setattr("patients.management.commands.import_fhir.MAX_BUNDLE_BYTES", 1024)
    path = tmp_path / "bundle.json"
    path.write_text(exported_then_discarded(), encoding="utf-8")

    # when / then
    with pytest.raises(CommandError, match="檔案太大"):
        import_command(path)
    assert not Patient.objects.exists()


def test_bundle_import_itself_refuses_an_oversized_bundle(monkeypatch):
    monkeypatch.setattr("patients.fhir.importer.MAX_BUNDLE_BYTES", 1024)

    with pytest.raises(FhirImportError, match="檔案太大"):
        bundle_import(exported_then_discarded(), now=NOW)


def test_export_command_writes_a_private_file_and_is_audited_as_an_export(tmp_path):
    # given
    patient = make_patient()
    target = tmp_path / "F-2001.json"

    # when
    call_command("export_fhir", "F-2001", "-o", str(target), stdout=StringIO(), stderr=StringIO())

    # then
    document = json.loads(target.read_text(encoding="utf-8"))
    assert document["resourceType"] == "Bundle"
    assert resources(target.read_text(encoding="utf-8"), "Patient")[0]["name"][0]["text"] == NAME
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    entry = AuditEntry.objects.get(action=AuditEntry.Action.EXPORT)
    assert entry.actor_name == "manage.py export_fhir"
    assert entry.detail == "FHIR R4 Bundle"
    assert list(entry.patients.all()) == [patient]


def test_export_command_of_an_unknown_chart_number_fails_unaudited():
    with pytest.raises(CommandError, match="No patient with chart number X-1"):
        call_command("export_fhir", "X-1", stdout=StringIO())
    assert not AuditEntry.objects.exists()


def test_no_patient_data_in_logs(tmp_path, caplog):
    # given
    caplog.set_level(logging.DEBUG)
    bad = _bundle_with(_second_patient_with_bad_phone)
    path = tmp_path / "bundle.json"
    path.write_text(exported_then_discarded(), encoding="utf-8")

    # when
    import_command(path)
    call_command("export_fhir", "F-2001", stdout=StringIO())
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(CommandError):
        import_command(path)

    # then
    assert "FHIR bundle" in caplog.text  # the import did log, with counts only
    for secret in (NAME, NATIONAL_ID, "912345678", EMAIL, LINE_ID, "F-2001", BAD_PHONE):
        assert secret not in caplog.text


def test_import_is_audited_with_the_patients_it_touched(tmp_path):
    # given
    path = tmp_path / "bundle.json"
    path.write_text(exported_then_discarded(), encoding="utf-8")

    # when
    import_command(path)

    # then
    entry = AuditEntry.objects.get(action=AuditEntry.Action.IMPORT)
    assert entry.actor_name == "manage.py import_fhir"
    assert entry.detail.startswith("FHIR R4 Bundle sha256:")
    assert list(entry.patients.all()) == [Patient.objects.get()]


def test_his_numbers_travel_and_match_a_moved_booking():
    # given: a booking the HIS knows by its number, confirmed here
    patient = make_patient()
    booking = Appointment.objects.get(status=Appointment.Status.BOOKED)
    booking.external_id = "HIS-A-778"
    booking.status = Appointment.Status.CONFIRMED
    booking.confirmed_via = Appointment.ConfirmedVia.PHONE
    booking.save()
    document = json.loads(bundle_of(patient))
    resource = next(
        e["resource"]
        for e in document["entry"]
        if e["resource"].get("identifier")
        == [{"system": "urn:clinic-crm:fhir:his-number", "value": "HIS-A-778"}]
    )

    # when: the HIS moved it an hour later
    resource["start"] = resource["end"] = "2026-03-12T11:30:00+08:00"
    report = bundle_import(json.dumps(document), now=NOW)

    # then: the same booking moved, and its confirmation (for the old time) is asked again
    booking.refresh_from_db()
    assert report.updated == {"Appointment": 1} and not report.created
    assert booking.starts_at == dt.datetime(2026, 3, 12, 11, 30, tzinfo=TPE)
    assert booking.status == Appointment.Status.BOOKED and booking.confirmed_via == ""


def test_booked_in_a_bundle_never_undoes_a_cancellation_made_here():
    # given
    patient = make_patient()
    document = bundle_of(patient)
    Appointment.objects.filter(status="booked").update(status=Appointment.Status.CANCELLED)

    # when
    report = bundle_import(document, now=NOW)

    # then
    assert not report.updated
    assert not Appointment.objects.filter(status=Appointment.Status.BOOKED).exists()


def test_phone_and_birth_date_match_only_when_the_name_agrees():
    # given: a twin shares the phone and the birth date
    patient = make_patient()
    document = json.loads(bundle_of(patient))
    twin = document["entry"][0]["resource"]
    twin["identifier"] = [{"system": "urn:clinic-crm:chart-no", "value": "F-2002"}]
    twin["name"] = [{"text": "林淑芳"}]
    document["entry"] = document["entry"][:1]

    # when
    report = bundle_import(json.dumps(document), now=NOW)

    # then
    assert report.created == {"Patient": 1}
    assert Patient.objects.count() == 2


def test_a_consent_dated_by_day_only_is_recorded_at_the_start_of_that_day():
    # given
    document = json.loads(exported_then_discarded())
    for entry in document["entry"]:
        if entry["resource"]["resourceType"] == "Consent":
            entry["resource"]["dateTime"] = entry["resource"]["dateTime"][:10]

    # when
    bundle_import(json.dumps(document), now=NOW)

    # then
    assert sorted(ConsentEntry.objects.values_list("recorded_at", flat=True)) == [
        dt.datetime(2025, 6, 1, tzinfo=TPE),
        dt.datetime(2025, 9, 9, tzinfo=TPE),
    ]


def test_a_bundle_does_not_bring_back_what_an_erased_patient_had_removed(manager_user):
    # given: the HIS still has the contact data and a consent of a patient erased here
    patient = make_patient()
    bundle = bundle_of(patient)
    patient_erase(patient=patient, actor=manager_user)
    visits = Visit.objects.count()
    ledger = ConsentEntry.objects.count()

    # when
    report = bundle_import(bundle, now=NOW)

    # then
    patient.refresh_from_db()
    assert patient.phone == "" and patient.email == "" and patient.national_id == ""
    assert ConsentEntry.objects.count() == ledger
    assert not ConsentState.objects.filter(patient=patient, granted=True).exists()
    assert Visit.objects.count() == visits
    assert any("erased on request" in change for change in report.changes)
