"""The audit trail is as append-only as each entry in it: which patients an entry is about can't
be changed afterwards, a patient with a trail can't be deleted, and erasure keeps the trail
under a pseudonymous reference."""

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.urls import reverse

from clinic_crm.append_only import AppendOnlyError
from patients.models import AuditEntry, AuditLink, Patient
from patients.services import audit_record, patient_erase
from tests.factories import PatientFactory, grant

pytestmark = pytest.mark.django_db

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="database triggers are PostgreSQL's"
)


@pytest.fixture
def seen():
    """Two patients and the audit entry of a page that showed them both."""
    patients = PatientFactory.create_batch(2)
    entry = audit_record(actor="desk", action=AuditEntry.Action.LIST, patients=patients)
    return entry, patients


@pytest.mark.parametrize(
    "tamper",
    [
        lambda entry, patients: entry.patients.remove(patients[0]),
        lambda entry, patients: entry.patients.clear(),
        lambda entry, patients: entry.patients.set(patients[:1]),
        lambda entry, patients: patients[0].audit_entries.clear(),
        lambda entry, patients: AuditLink.objects.filter(entry=entry).delete(),
        lambda entry, patients: AuditLink.objects.filter(entry=entry).update(patient=patients[0]),
        lambda entry, patients: entry.links.first().delete(),
    ],
    ids=["remove", "clear", "set", "reverse-clear", "delete", "update", "delete-one"],
)
def test_no_patient_can_be_taken_out_of_an_audit_entry(seen, tamper):
    entry, patients = seen

    # (In a savepoint: the related managers' own atomic blocks don't make one.)
    with pytest.raises(AppendOnlyError), transaction.atomic():
        tamper(entry, patients)

    assert set(entry.patients.all()) == set(patients)


def test_a_link_row_cannot_be_saved_over(seen):
    entry, patients = seen
    link = entry.links.get(patient=patients[0])

    link.patient = patients[1]
    with pytest.raises(AppendOnlyError):
        link.save()


@postgresql_only
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE patients_auditlink SET patient_id = patient_id",
        "DELETE FROM patients_auditlink",
        "TRUNCATE patients_auditlink",
        "TRUNCATE patients_auditentry CASCADE",
    ],
)
def test_link_rows_refuse_raw_sql_on_postgresql(seen, statement):
    entry, patients = seen

    with pytest.raises(DatabaseError, match="is append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            # Rows written in this test's transaction have foreign-key checks pending, which
            # TRUNCATE would trip over before any trigger: run them now.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(statement)

    assert set(entry.patients.all()) == set(patients)


def test_a_patient_with_audit_history_cannot_be_deleted(seen):
    entry, patients = seen

    with pytest.raises(ProtectedError):
        patients[0].delete()

    assert Patient.objects.filter(pk=patients[0].pk).exists()
    assert set(entry.patients.all()) == set(patients)


@postgresql_only
def test_a_patient_with_audit_history_cannot_be_deleted_in_sql_either(seen):
    entry, patients = seen

    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        # Django's foreign keys are checked at commit; ask now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("DELETE FROM patients_patient WHERE id = %s", [patients[0].pk])

    assert set(entry.patients.all()) == set(patients)


def test_every_link_keeps_the_patients_uuid_as_a_pseudonymous_reference(seen):
    entry, patients = seen

    references = dict(entry.links.values_list("patient_id", "patient_uuid"))

    assert references == {patient.pk: patient.uuid for patient in patients}


def test_erasure_keeps_the_audit_trail_under_a_pseudonym(manager_user):
    # given a patient whose record was viewed, then is erased
    patient = PatientFactory(name="陳美玲", chart_no="E-1001")
    grant(patient)
    viewed = audit_record(actor="desk", action=AuditEntry.Action.VIEW, patients=[patient])

    patient_erase(patient=patient, actor=manager_user)

    # then the earlier entry and the erasure itself are both in the trail, by uuid as well
    erased = AuditEntry.objects.get(action=AuditEntry.Action.ERASE)
    assert list(viewed.patients.all()) == [patient]
    assert list(erased.patients.all()) == [patient]
    assert set(
        AuditLink.objects.filter(patient=patient).values_list("patient_uuid", flat=True)
    ) == {patient.uuid}
    assert set(patient.audit_entries.all()) == {viewed, erased}
    # and the trail holds no name or contact data
    for row in AuditEntry.objects.values("actor_name", "path", "detail"):
        assert "陳美玲" not in str(row)


def test_audit_record_writes_the_entry_and_its_links_together_or_not_at_all(monkeypatch):
    patient = PatientFactory()

    def fail(*args, **kwargs):
        raise IntegrityError("link insert failed")

    monkeypatch.setattr(AuditLink.objects, "bulk_create", fail)
    with pytest.raises(IntegrityError):
        audit_record(actor="desk", action=AuditEntry.Action.VIEW, patients=[patient])

    assert not AuditEntry.objects.exists()


def test_audit_record_refuses_an_unknown_patient():
    patient = PatientFactory()

    with pytest.raises(Patient.DoesNotExist):
        audit_record(actor="desk", action=AuditEntry.Action.VIEW, patients=[patient.pk, 999_999])

    assert not AuditEntry.objects.exists()
    assert not AuditLink.objects.exists()


def test_the_audit_log_still_lists_entries_with_their_patient_counts(client, manager_user):
    # given
    three = audit_record(
        actor="desk", action=AuditEntry.Action.LIST, patients=PatientFactory.create_batch(3)
    )
    one = audit_record(actor="desk", action=AuditEntry.Action.VIEW, patients=[PatientFactory()])
    client.force_login(manager_user)

    # when
    response = client.get(reverse("admin:patients_auditentry_changelist"))

    # then
    counts = {entry.pk: entry.patient_total for entry in response.context["cl"].result_list}
    assert counts == {three.pk: 3, one.pk: 1}
    assert response.status_code == 200
