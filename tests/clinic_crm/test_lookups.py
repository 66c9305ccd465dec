"""`__any` finds exactly what `__in` finds, as one array parameter on PostgreSQL."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from clinic_crm.lookups import any_sql
from patients.models import Patient, Visit
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def patients():
    return [PatientFactory(chart_no=f"C{n}", birth_date=dt.date(1960 + n, 1, 2)) for n in range(4)]


@pytest.mark.parametrize(
    ("lookup", "values"),
    [
        ("chart_no", ["C1", "C3", "nobody", "C1"]),
        ("birth_date", [dt.date(1961, 1, 2), dt.date(1999, 9, 9)]),
        ("id", "ids"),
        ("phone_bidx", "digests"),
        ("chart_no", ["C2", None]),
    ],
)
def test_any_finds_what_in_finds(patients, lookup, values):
    if values == "ids":
        values = [patients[0].pk, patients[2].pk, 10**9]
    if values == "digests":
        values = [patients[1].phone_bidx, "0" * 64]
    expected = set(Patient.objects.filter(**{f"{lookup}__in": values}))
    assert expected  # the case finds someone
    assert set(Patient.objects.filter(**{f"{lookup}__any": values})) == expected
    assert set(Patient.objects.exclude(**{f"{lookup}__any": values})) == set(patients) - expected


def test_any_of_nothing_finds_nothing(patients):
    assert not Patient.objects.filter(chart_no__any=[]).exists()
    assert not Patient.objects.filter(chart_no__any=[None]).exists()
    assert Patient.objects.exclude(chart_no__any=[]).count() == len(patients)


def test_any_through_a_relation_and_in_a_long_list(patients):
    Visit.objects.create(patient=patients[1], visited_on=dt.date(2026, 1, 5))
    many = [f"X{n}" for n in range(20_000)] + ["C1"]
    with CaptureQueriesContext(connection) as queries:
        found = list(Visit.objects.filter(patient__chart_no__any=many))
    assert [visit.patient_id for visit in found] == [patients[1].pk]
    if connection.vendor == "postgresql":
        # One parameter, not 20,001 placeholders.
        assert "= ANY(" in queries[0]["sql"] and queries[0]["sql"].count("'X") == 0


def test_any_sql_for_raw_queries(patients):
    wanted = [patients[0].pk, patients[3].pk]
    condition, params = any_sql("id", wanted, Patient._meta.pk.db_type(connection))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM patients_patient WHERE {condition}", params)  # noqa: S608
        assert sorted(row[0] for row in cursor.fetchall()) == sorted(wanted)


def test_any_on_a_foreign_key(patients):
    for patient in patients[:3]:
        Visit.objects.create(patient=patient, visited_on=dt.date(2026, 1, 5))
    wanted = [patients[0].pk, patients[2].pk]
    expected = set(Visit.objects.filter(patient_id__in=wanted))
    assert len(expected) == 2
    assert set(Visit.objects.filter(patient_id__any=wanted)) == expected
    assert set(Visit.objects.filter(patient__any=wanted)) == expected
