"""The front desk's patient search: every spelling, every kind, and the blind index it adds."""

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.db import connection

from clinic_crm.rotation import blind_index_rebuild
from patients.models import Patient
from patients.selectors import patient_search, phone_tail_birth_split
from tests.clinic_crm.test_settings import new_key
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def chen():
    return PatientFactory(
        chart_no="A001234",
        name="陳美玲",
        phone="0912-345-678",
        birth_date=dt.date(1960, 3, 15),
        national_id="A123456789",
    )


@pytest.fixture
def neighbours():
    """Patients who share one of the two facts with chen, but not both."""
    return [
        PatientFactory(phone="0922-005-678", birth_date=dt.date(1961, 3, 15)),  # same last 4
        PatientFactory(phone="0933-001-111", birth_date=dt.date(1960, 3, 15)),  # same birthday
    ]


def found(term: str) -> list[Patient]:
    return list(patient_search(term))


@pytest.mark.parametrize(
    "term",
    [
        "5678 1960-03-15",
        "5678 1960/3/15",
        "5678 49/03/15",  # ROC year 49
        "5678 049/3/15",
        "5678 0490315",
        "5678 19600315",
        "1960-03-15 5678",
        "  ５６７８　1960-03-15 ",  # full-width digits and space from a Chinese IME
    ],
)
def test_last_four_digits_of_the_phone_and_the_birth_date_find_the_patient(chen, neighbours, term):
    assert found(term) == [chen]


def test_patients_sharing_last_four_digits_and_birth_date_are_all_listed(chen):
    twin = PatientFactory(phone="+886 987 655 678", birth_date=dt.date(1960, 3, 15))

    assert found("5678 1960-03-15") == [chen, twin]


def test_a_wrong_birth_date_or_last_four_digits_finds_nobody(chen, neighbours):
    assert found("5678 1960-03-16") == []
    assert found("5679 1960-03-15") == []
    assert phone_tail_birth_split("5678 1960-02-30") is None


@pytest.mark.parametrize("term", ["A001", "a001234", "Ａ００１２"])
def test_chart_number_prefix(chen, neighbours, term):
    assert found(term) == [chen]


@pytest.mark.parametrize("term", ["陳美玲", " 陳 美玲 "])
def test_full_name(chen, neighbours, term):
    assert found(term) == [chen]


@pytest.mark.parametrize("term", ["0912345678", "0912-345-678", "+886 912 345 678", "912345678"])
def test_phone_in_any_spelling(chen, neighbours, term):
    assert found(term) == [chen]


@pytest.mark.parametrize("term", ["A123456789", "a123456789", "Ａ１２３４５６７８９"])
def test_national_id(chen, neighbours, term):
    assert found(term) == [chen]


def test_a_part_of_a_name_or_of_a_phone_finds_nobody(chen):
    assert found("美玲") == []
    assert found("5678") == []  # the last four digits alone are not indexed


def test_the_index_is_a_keyed_hmac_not_the_digits_and_date(chen):
    stored = Patient.objects.filter(pk=chen.pk).values_list("phone4_birth_bidx", flat=True).get()

    assert stored and len(stored) == 64
    assert "5678" not in stored and "1960" not in stored
    assert stored != chen.phone_bidx


def test_the_index_follows_a_changed_phone_or_birth_date(chen):
    chen.phone = "0955-111-222"
    chen.save()
    assert found("1222 1960-03-15") == [chen] and found("5678 1960-03-15") == []

    chen.birth_date = dt.date(1960, 3, 16)
    chen.save()
    assert found("1222 1960-03-16") == [chen] and found("1222 1960-03-15") == []

    chen.birth_date = None
    chen.save()
    assert Patient.objects.get(pk=chen.pk).phone4_birth_bidx is None


def test_reindex_rebuilds_the_new_index_under_a_new_key(settings, chen):
    before = Patient.objects.get(pk=chen.pk).phone4_birth_bidx
    settings.BLIND_INDEX_KEY_PREVIOUS = settings.BLIND_INDEX_KEY
    settings.BLIND_INDEX_KEY = new_key()
    assert found("5678 1960-03-15") == [chen]  # during the re-index: either key

    blind_index_rebuild()
    settings.BLIND_INDEX_KEY_PREVIOUS = ""

    assert Patient.objects.get(pk=chen.pk).phone4_birth_bidx not in (None, before)
    assert found("5678 1960-03-15") == [chen]


def test_the_migration_fills_the_index_for_existing_patients(chen, neighbours):
    Patient.objects.update(phone4_birth_bidx=None)
    assert found("5678 1960-03-15") == []
    migration = importlib.import_module("patients.migrations.0006_clinic_days")

    class Editor:
        connection = connection

    migration.fill_phone4_birth_index(apps, Editor())

    assert found("5678 1960-03-15") == [chen]
    assert found("5678 1961-03-15") == [neighbours[0]]


def test_the_admin_search_by_last_four_and_roc_birth_date_is_audited_without_the_term(
    client, front_desk_user, chen, neighbours
):
    from django.urls import reverse

    from patients.models import AuditEntry

    client.force_login(front_desk_user)

    response = client.get(reverse("admin:patients_patient_changelist"), {"q": "5678 49/03/15"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [chen]
    entry = AuditEntry.objects.get(action=AuditEntry.Action.SEARCH)
    assert list(entry.patients.all()) == [chen]
    assert "5678" not in entry.detail + entry.path and "49/03/15" not in entry.detail
