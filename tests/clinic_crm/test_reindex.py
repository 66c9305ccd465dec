"""Key check values in the database, and rebuilding blind indexes under a new BLIND_INDEX_KEY."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clinic_crm import keycheck
from clinic_crm.fields import BlindIndexField
from clinic_crm.keycheck import KeyMismatch, keys_verify
from clinic_crm.models import KeyCheck
from clinic_crm.rotation import blind_index_rebuild, encryption_rotate
from patients.models import Patient
from patients.selectors import patient_search
from tests.clinic_crm.test_settings import new_key
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


def stored_indexes(patient) -> dict[str, str | None]:
    fields = [f.attname for f in Patient._meta.concrete_fields if isinstance(f, BlindIndexField)]
    return Patient.objects.values(*fields).get(pk=patient.pk)


@pytest.fixture
def old_blind_key(settings):
    """Data indexed under key A, with A recorded as the key in use."""
    settings.BLIND_INDEX_KEY = new_key()
    settings.BLIND_INDEX_KEY_PREVIOUS = ""
    KeyCheck.objects.all().delete()
    keycheck.keycheck_record()
    return settings.BLIND_INDEX_KEY


# --- the check values ---


def test_the_migrated_database_has_a_check_value_for_each_key():
    assert set(KeyCheck.objects.values_list("purpose", flat=True)) == {
        "blind_index",
        "field_encryption",
    }
    keys_verify()  # the test process's keys wrote them


def test_a_wrong_blind_index_key_is_refused_naming_it(settings):
    settings.BLIND_INDEX_KEY = new_key()

    with pytest.raises(KeyMismatch, match="BLIND_INDEX_KEY is not the key"):
        keys_verify()


def test_the_check_value_never_holds_the_key(settings):
    value = KeyCheck.objects.get(purpose="blind_index").value

    assert settings.BLIND_INDEX_KEY not in value
    assert len(value) == 64


def test_encryption_keys_without_the_datas_key_are_refused_naming_them(settings):
    settings.FIELD_ENCRYPTION_KEYS = [new_key()]

    with pytest.raises(KeyMismatch, match="FIELD_ENCRYPTION_KEYS does not hold the key"):
        keys_verify()


def test_rotation_moves_the_encryption_check_to_the_new_key_only_when_it_finishes(
    settings, monkeypatch
):
    # given: a new key in front of the old one, and patients under the old one
    old = list(settings.FIELD_ENCRYPTION_KEYS)
    PatientFactory.create_batch(3)
    new = new_key()
    settings.FIELD_ENCRYPTION_KEYS = [new, *old]

    # when: the rotation dies half-way
    calls = {"n": 0}
    original = Patient._meta.get_field("name").seal

    def die_on_second(instance):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("connection lost")
        return original(instance)

    monkeypatch.setattr(Patient._meta.get_field("name"), "seal", die_on_second)
    with pytest.raises(RuntimeError):
        encryption_rotate(batch_size=1)
    monkeypatch.undo()

    # then: dropping the old key now would strand data, and is refused
    settings.FIELD_ENCRYPTION_KEYS = [new]
    with pytest.raises(KeyMismatch, match="FIELD_ENCRYPTION_KEYS"):
        keys_verify()

    # when: the rotation is run again to the end
    settings.FIELD_ENCRYPTION_KEYS = [new, *old]
    encryption_rotate()

    # then: the old key may go
    settings.FIELD_ENCRYPTION_KEYS = [new]
    keys_verify()


def test_a_database_check_reports_the_mismatch(settings):
    from django.core.checks import run_checks

    settings.BLIND_INDEX_KEY = new_key()

    errors = run_checks(tags=["database"], databases=["default"])

    assert [e.id for e in errors if e.id.startswith("clinic_crm.")] == ["clinic_crm.E003"]


def test_recording_refuses_keys_that_dont_match_data_already_there(settings):
    # given: an install older than the check: patients, no check value yet
    PatientFactory(name="林小明")
    KeyCheck.objects.all().delete()

    # when: the first migrate after the upgrade runs with another blind-index key
    settings.BLIND_INDEX_KEY = new_key()

    # then
    with pytest.raises(KeyMismatch, match="BLIND_INDEX_KEY is not the key"):
        keycheck.keycheck_record()
    assert not KeyCheck.objects.exists()


# --- re-indexing under a new BLIND_INDEX_KEY ---


def test_during_a_reindex_search_and_stop_replies_find_patients_under_either_key(
    settings, old_blind_key
):
    # given: patients indexed under A; the processes restarted with B new, A previous
    patient = PatientFactory(name="陳美玲", phone="0912-345-678", national_id="A123456789")
    settings.BLIND_INDEX_KEY = new_key()
    settings.BLIND_INDEX_KEY_PREVIOUS = old_blind_key
    keys_verify()  # a rotation under way starts

    # when: a patient is added under B before the re-index reaches anyone
    newcomer = PatientFactory(name="王大同", phone="0933-111-222")

    # then: both are found, by every indexed field
    assert list(patient_search("0912345678")) == [patient]
    assert list(patient_search("陳美玲")) == [patient]
    assert list(patient_search("A123456789")) == [patient]
    assert list(patient_search("王大同")) == [newcomer]
    # the lookup a STOP reply makes (reminders.replies) finds the sender too
    digest = Patient.index_of("phone", "+886912345678")
    assert list(Patient.objects.filter(phone_bidx=digest)) == [patient]


def test_a_duplicate_national_id_is_caught_while_the_other_is_under_the_old_key(
    settings, old_blind_key
):
    from django.core.exceptions import ValidationError

    PatientFactory(national_id="A123456789")
    settings.BLIND_INDEX_KEY = new_key()
    settings.BLIND_INDEX_KEY_PREVIOUS = old_blind_key
    twin = Patient(chart_no="TWIN-1", name="雙胞胎", national_id="A123456789")

    with pytest.raises(ValidationError, match="national_id"):
        twin.full_clean()


def test_reindex_rebuilds_every_index_under_the_new_key_and_records_it(settings, old_blind_key):
    # given
    patients = [PatientFactory(phone=f"0912-000-00{i}") for i in range(5)]
    before = [stored_indexes(p) for p in patients]
    new = new_key()
    settings.BLIND_INDEX_KEY = new
    settings.BLIND_INDEX_KEY_PREVIOUS = old_blind_key

    # when
    changed = blind_index_rebuild(batch_size=2)

    # then: every index changed, and once the previous key is gone everything is still found
    assert changed == 5
    assert all(stored_indexes(p) != b for p, b in zip(patients, before, strict=True))
    settings.BLIND_INDEX_KEY_PREVIOUS = ""
    keys_verify()
    for p in patients:
        assert list(patient_search(p.phone)) == [p]
        assert list(patient_search(p.name)) == [p]
    # and the old key alone is now refused
    settings.BLIND_INDEX_KEY = old_blind_key
    with pytest.raises(KeyMismatch):
        keys_verify()


def test_an_interrupted_reindex_resumes_and_only_then_records_the_new_key(
    settings, old_blind_key, monkeypatch
):
    # given
    patients = PatientFactory.create_batch(4)
    settings.BLIND_INDEX_KEY = new_key()
    settings.BLIND_INDEX_KEY_PREVIOUS = old_blind_key
    field = Patient._meta.get_field("name_bidx")
    original = field.digest
    dying_on = patients[2].name

    def digest_or_die(raw):
        if raw == dying_on:
            raise RuntimeError("connection lost")
        return original(raw)

    # when: the run dies in the second batch of two
    monkeypatch.setattr(field, "digest", digest_or_die)
    with pytest.raises(RuntimeError):
        blind_index_rebuild(batch_size=2)
    monkeypatch.undo()

    # then: the first batch is committed; the new key is not yet the one on record
    settings.BLIND_INDEX_KEY_PREVIOUS = ""
    with pytest.raises(KeyMismatch):
        keys_verify()
    settings.BLIND_INDEX_KEY_PREVIOUS = old_blind_key
    assert [list(patient_search(p.name)) for p in patients] == [[p] for p in patients]

    # when: run again
    changed = blind_index_rebuild(batch_size=2)

    # then: only the rest was left
    assert changed == 2
    settings.BLIND_INDEX_KEY_PREVIOUS = ""
    keys_verify()


def test_reindex_command_dry_run_counts_and_changes_nothing(settings, old_blind_key):
    # given
    patients = PatientFactory.create_batch(3)
    before = [stored_indexes(p) for p in patients]
    settings.BLIND_INDEX_KEY = new_key()
    settings.BLIND_INDEX_KEY_PREVIOUS = old_blind_key

    # when
    dry = StringIO()
    call_command("reindex", "--dry-run", "--batch-size", "2", stdout=dry)

    # then
    assert "Patient: 2/3 rows, 2 to re-index" in dry.getvalue()
    assert "Total: 3 rows not yet indexed under BLIND_INDEX_KEY." in dry.getvalue()
    assert [stored_indexes(p) for p in patients] == before

    # when
    out = StringIO()
    call_command("reindex", stdout=out)

    # then
    assert "Total: 3 rows re-indexed" in out.getvalue()
    assert "remove BLIND_INDEX_KEY_PREVIOUS" in out.getvalue()
    assert call_command("reindex", "--dry-run", stdout=StringIO()) is None
    assert blind_index_rebuild(dry_run=True) == 0


def test_reindex_names_the_row_it_cannot_decrypt(settings, old_blind_key):
    # given: a patient under an encryption key that is no longer configured
    settings.FIELD_ENCRYPTION_KEYS = [new_key()]
    patient = PatientFactory()
    settings.FIELD_ENCRYPTION_KEYS = [new_key()]

    # when / then
    with pytest.raises(CommandError, match=f"Patient id {patient.pk}, field"):
        call_command("reindex", stdout=StringIO())
