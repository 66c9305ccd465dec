"""A patient's rights over their data: a copy of everything held, and erasure of contact data."""

import datetime as dt
import json
import stat
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from campaigns.models import Rule
from consent.models import Channel, ConsentEntry, ConsentState, Purpose
from consent.selectors import may_contact
from patients.models import AuditEntry, Patient, Prescription, Visit
from patients.selectors import patient_search
from patients.services import patient_erase, prescription_sync_refills
from reminders.models import OutboxMessage
from tests.factories import PatientFactory, PrescriptionFactory, VisitFactory, grant, withdraw

pytestmark = pytest.mark.django_db

NAME = "陳美玲"
PHONE = "0912-345-678"
EMAIL = "mei.chen@example.test"
LINE_ID = "U" + "0123456789abcdef" * 2


@pytest.fixture
def patient():
    """A patient with a visit, a chronic prescription with two refills, and consent history."""
    patient = PatientFactory(
        chart_no="A-1001",
        name=NAME,
        phone=PHONE,
        email=EMAIL,
        line_user_id=LINE_ID,
        national_id="A223456789",
        caregiver_contact="女兒 陳小華 0922-111-222",
        notes="怕打針",
    )
    visit = VisitFactory(patient=patient, visited_on=dt.date(2026, 1, 5), note="血壓 150/95")
    prescription = PrescriptionFactory(
        patient=patient, visit=visit, start_date=dt.date(2026, 1, 5), days_supplied=28, refills=2
    )
    prescription_sync_refills(prescription=prescription)
    grant(patient, Purpose.CARE, Channel.SMS)
    grant(patient, Purpose.CARE, Channel.LINE)
    grant(patient, Purpose.RELATIONSHIP, Channel.EMAIL)
    withdraw(patient, Purpose.RELATIONSHIP, Channel.EMAIL)
    grant(patient, Purpose.RELATIONSHIP, Channel.SMS)
    return patient


def export(*argv: str) -> dict:
    out = StringIO()
    call_command("export_patient", *argv, stdout=out)
    return json.loads(out.getvalue())


def test_export_command_prints_everything_held_about_the_patient_decrypted(patient):
    # when
    document = export("A-1001")

    # then
    assert document["patient"]["name"] == NAME
    assert document["patient"]["phone"] == "+886912345678"
    assert document["patient"]["notes"] == "怕打針"
    assert not any(key.endswith("_bidx") for key in document["patient"])
    assert [(v["visited_on"], v["note"]) for v in document["visits"]] == [
        ("2026-01-05", "血壓 150/95")
    ]
    (prescription,) = document["prescriptions"]
    assert prescription["drug"] == "Amlodipine 5mg"
    assert [
        (w["number"], w["opens_on"], w["closes_on"]) for w in prescription["refill_windows"]
    ] == [
        (1, "2026-01-23", "2026-02-01"),
        (2, "2026-02-20", "2026-03-01"),
    ]
    ledger = [(e["purpose"], e["channel"], e["action"]) for e in document["consent_entries"]]
    assert sorted(ledger) == sorted(
        [
            ("care", "sms", "grant"),
            ("care", "line", "grant"),
            ("relationship", "email", "grant"),
            ("relationship", "email", "withdraw"),
            ("relationship", "sms", "grant"),
        ]
    )


def test_export_command_accepts_the_chart_number_in_any_case(patient):
    assert export("a-1001")["patient"]["chart_no"] == "A-1001"


def test_export_command_is_audited_with_the_command_as_actor(patient):
    # when
    export("A-1001")

    # then
    entry = AuditEntry.objects.get(action=AuditEntry.Action.EXPORT)
    assert entry.actor is None
    assert entry.actor_name == "manage.py export_patient"
    assert list(entry.patients.all()) == [patient]


def test_export_command_writes_a_private_file(patient, tmp_path):
    # given
    target = tmp_path / "A-1001.json"
    target.write_text("an older, world-readable export")
    target.chmod(0o644)

    # when
    call_command("export_patient", "A-1001", "--output", str(target), stdout=StringIO())

    # then
    assert json.loads(target.read_text(encoding="utf-8"))["patient"]["name"] == NAME
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_export_command_rejects_an_unknown_chart_number(patient):
    with pytest.raises(CommandError, match="No patient with chart number X-9999"):
        call_command("export_patient", "X-9999", stdout=StringIO())

    assert not AuditEntry.objects.exists()


def test_export_to_an_unwritable_path_fails_before_anything_is_audited(patient, tmp_path):
    with pytest.raises(CommandError, match="Can't write"):
        call_command("export_patient", "A-1001", "--output", str(tmp_path / "missing" / "x.json"))

    assert not AuditEntry.objects.exists()


def test_erasure_removes_contact_data_and_its_blind_indexes(patient, manager_user):
    # when
    patient_erase(patient=patient, actor=manager_user)

    # then
    erased = Patient.objects.get(pk=patient.pk)
    assert erased.name == "(erased A-1001)"
    for field in ("phone", "email", "line_user_id", "national_id", "caregiver_contact", "notes"):
        assert getattr(erased, field) == ""
        assert getattr(erased, f"{field}_bidx", None) is None
    assert erased.name_bidx != Patient.index_of("name", NAME)
    assert erased.erased_at is not None
    for term in (NAME, PHONE, EMAIL, LINE_ID, "A223456789"):
        assert not patient_search(term).exists()


def test_erasure_withdraws_every_consent_and_keeps_the_ledger(patient, manager_user):
    # given
    ledger_before = set(ConsentEntry.objects.filter(patient=patient).values_list("pk", flat=True))

    # when
    patient_erase(patient=patient, actor=manager_user)

    # then: one new withdrawal per consent that was granted, recorded against the manager
    new = ConsentEntry.objects.filter(patient=patient).exclude(pk__in=ledger_before)
    assert sorted(new.values_list("purpose", "channel", "action")) == [
        ("care", "line", "withdraw"),
        ("care", "sms", "withdraw"),
        ("relationship", "sms", "withdraw"),
    ]
    assert {e.recorded_by for e in new} == {manager_user}
    assert ledger_before <= set(ConsentEntry.objects.values_list("pk", flat=True))
    assert not ConsentState.objects.filter(patient=patient, granted=True).exists()
    for purpose in Purpose:
        for channel in Channel:
            assert not may_contact(patient=patient, purpose=purpose, channel=channel)


def test_erasure_keeps_medical_records(patient, manager_user):
    # when
    patient_erase(patient=patient, actor=manager_user)

    # then
    assert Visit.objects.get(patient=patient).note == "血壓 150/95"
    prescription = Prescription.objects.get(patient=patient)
    assert prescription.refill_windows.count() == 2


def test_erasure_is_audited(patient, manager_user):
    # when
    patient_erase(patient=patient, actor=manager_user)

    # then
    entry = AuditEntry.objects.get(action=AuditEntry.Action.ERASE)
    assert entry.actor == manager_user
    assert entry.actor_name == manager_user.get_username()
    assert list(entry.patients.all()) == [patient]


def test_erasure_blanks_the_texts_of_messages_but_keeps_their_count(patient, manager_user):
    # given a sent message naming the patient
    now = timezone.now()
    OutboxMessage.objects.create(
        rule=Rule.objects.get(name__startswith="回診通知"),
        patient=patient,
        occurrence_key="k",
        purpose="care",
        channel="sms",
        status="sent",
        due_at=now,
        next_attempt_at=now,
        expires_at=now,
        subject="回診通知",
        body=f"{NAME}您好，提醒您明天回診",
    )

    # when
    patient_erase(patient=patient, actor=manager_user)

    # then
    message = OutboxMessage.objects.get(patient=patient)
    assert (message.subject, message.body) == ("", "")
    assert message.status == "sent"
