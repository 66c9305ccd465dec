import datetime as dt

import pytest
from django.db import IntegrityError, connection, transaction

from clinic_crm.copy_insert import insert_new
from patients.models import Patient, Visit
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


def _stored(model, pk, column):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def test_new_patients_are_stored_as_bulk_create_would_store_them():
    # COPY on PostgreSQL, bulk_create on SQLite: the same rows either way.
    patients = [
        Patient(
            chart_no="C1",
            name="王小明",
            birth_date=dt.date(1970, 2, 3),
            phone="0912-345-678",
            national_id="A123456789",
        ),
        Patient(chart_no="C2", name="林美玲", phone="02 2345 6789"),
    ]

    insert_new(Patient, patients)

    first = Patient.objects.get(pk=patients[0].pk)
    assert (first.name, first.phone, first.national_id) == ("王小明", "+886912345678", "A123456789")
    assert first.phone_is_mobile and first.birth_mmdd == 203 and first.created_at
    assert _stored(Patient, first.pk, "name").startswith("v1.")  # encrypted, not plaintext
    assert Patient.objects.get(phone_bidx=Patient.index_of("phone", "0912345678")) == first
    assert Patient.objects.get(national_id_bidx=Patient.index_of("national_id", "a123456789"))
    second = Patient.objects.get(pk=patients[1].pk)
    assert second.uuid == patients[1].uuid and not second.phone_is_mobile
    assert second.national_id == "" and second.national_id_bidx is None
    # The objects come back saved, for the audit links and consents that point at them.
    assert all(not p._state.adding for p in patients)


def test_new_records_point_at_their_patient_and_get_ids_after_existing_rows():
    patient = PatientFactory()
    before = Visit.objects.create(patient=patient, department="內科", doctor="林醫師")
    visits = [
        Visit(
            patient_id=patient.pk,
            visited_on=dt.date(2024, 5, 1),
            department="家醫科",
            doctor="王醫師",
            note="第一行\n第二行",
            external_id="V1",
        ),
    ]

    insert_new(Visit, visits)

    stored = Visit.objects.get(external_id="V1")
    assert stored.pk == visits[0].pk and stored.pk > before.pk
    assert (stored.patient, stored.note) == (patient, "第一行\n第二行")
    # The sequence moved past the COPY's ids: an ordinary insert after it doesn't clash.
    assert Visit.objects.create(patient=patient, department="內科", doctor="林醫師").pk > stored.pk


def test_a_clash_raises_djangos_error_so_the_importer_can_refuse_the_row():
    patient = PatientFactory()
    Visit.objects.create(patient=patient, department="內科", doctor="林醫師", external_id="V1")
    clash = Visit(patient_id=patient.pk, department="內科", doctor="林醫師", external_id="V1")

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_new(Visit, [clash])

    assert Visit.objects.count() == 1


def test_a_stored_key_is_left_alone_or_updated_as_bulk_creates_conflict_options_would():
    # The planner's skips and messages: a key stored already (another worker, an earlier pass)
    # is skipped, or with update_fields takes the new values; the other rows go in.
    from django.utils import timezone

    from campaigns.models import Rule, Skip

    rule = Rule.objects.order_by("pk").first()
    first, second = PatientFactory(), PatientFactory()
    then, now = timezone.now() - dt.timedelta(days=1), timezone.now()
    Skip.objects.create(rule=rule, patient=first, occurrence_key="k", reason="no_consent", at=then)

    def skips(reason):
        return [
            Skip(rule=rule, patient=p, occurrence_key="k", reason=reason, at=now)
            for p in (first, second)
        ]

    key = ["rule", "patient", "occurrence_key"]
    insert_new(Skip, skips("withdrawn"), unique_fields=key)
    stored = dict(Skip.objects.values_list("patient_id", "reason"))
    assert stored == {first.pk: "no_consent", second.pk: "withdrawn"}

    insert_new(Skip, skips("holdout"), unique_fields=key, update_fields=["reason", "at"])
    assert dict(Skip.objects.values_list("patient_id", "reason")) == {
        first.pk: "holdout",
        second.pk: "holdout",
    }
    assert Skip.objects.get(patient=first).at == now
