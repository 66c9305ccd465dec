import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection

from clinic_crm import crypto
from clinic_crm.fields import EncryptedTextField
from clinic_crm.rotation import encryption_rotate
from patients.models import Patient, Visit
from patients.selectors import patient_search
from tests.factories import PatientFactory, VisitFactory

BASE_DIR = Path(django_settings.BASE_DIR)

NAME = "陳美玲"
EMAIL = "mei.chen@example.test"
PHONE_SPELLINGS = ["0912-345-678", "+886912345678", "0912345678", "+886 912 345 678"]
# The national number is inside every spelling: not finding it rules them all out at once.
PHONE_DIGITS = "912345678"
CHART_NO = "ENC-0001"


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_id_of(raw: str) -> str:
    return crypto.Keyring((raw,)).current_id


def stored_key_ids(obj) -> set[str]:
    """Key ids of an object's encrypted values as stored, read without decrypting."""
    fresh = type(obj)._base_manager.get(pk=obj.pk)
    fields = [f for f in fresh._meta.concrete_fields if isinstance(f, EncryptedTextField)]
    return {f.stored_key_id(fresh) for f in fields} - {None}


def plaintexts() -> list[bytes]:
    return [text.encode() for text in [NAME, EMAIL, PHONE_DIGITS, *PHONE_SPELLINGS]]


@pytest.mark.django_db
def test_database_columns_hold_tokens_not_plaintext():
    # given
    patient = PatientFactory(name=NAME, phone="0912-345-678", email=EMAIL, chart_no=CHART_NO)
    visit = VisitFactory(patient=patient, note=f"{NAME} 血壓 150/95")

    # when
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM patients_patient WHERE id = %s", [patient.pk])
        patient_row = [str(value) for value in cursor.fetchone()]
        cursor.execute("SELECT note FROM patients_visit WHERE id = %s", [visit.pk])
        (visit_note,) = cursor.fetchone()

    # then
    raw = " ".join(patient_row + [visit_note]).encode()
    for text in plaintexts():
        assert text not in raw
    assert CHART_NO in patient_row
    assert visit_note.startswith("v1.")


def test_sqlite_database_file_holds_no_plaintext(tmp_path):
    # given: a real database file, written by a separate process as the app would write it
    database = tmp_path / "crm.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "DEBUG": "0",
        "SECRET_KEY": "test-only-secret",
        "FIELD_ENCRYPTION_KEYS": new_key(),
        "BLIND_INDEX_KEY": new_key(),
    }
    script = (
        "from patients.models import Patient, Visit\n"
        f"p = Patient.objects.create(chart_no={CHART_NO!r}, name={NAME!r}, "
        f"phone='0912-345-678', email={EMAIL!r})\n"
        f"Visit.objects.create(patient=p, department='家醫科', doctor='王醫師', note={NAME!r})\n"
    )

    # when
    for argv in (["migrate", "--verbosity", "0"], ["shell", "--command", script]):
        subprocess.run(  # noqa: S603 - our own manage.py, fixed arguments
            [sys.executable, "manage.py", *argv],
            cwd=BASE_DIR,
            env=env,
            check=True,
            capture_output=True,
        )

    # then: the file (and any journal beside it) has the chart number but none of the plaintext
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("crm.sqlite3*"))
    assert CHART_NO.encode() in stored
    for text in plaintexts():
        assert text not in stored


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_dump is PostgreSQL's")
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_postgresql_dump_holds_no_plaintext():
    # given: committed rows (transaction=True), so another connection can see them
    patient = PatientFactory(name=NAME, phone="0912-345-678", email=EMAIL, chart_no=CHART_NO)
    VisitFactory(patient=patient, note=NAME)
    db = connection.settings_dict
    env = {**os.environ, "PGPASSWORD": db.get("PASSWORD") or ""}
    argv = ["pg_dump", "--no-owner", "--dbname", db["NAME"]]
    for option, key in (("--host", "HOST"), ("--port", "PORT"), ("--username", "USER")):
        if db.get(key):
            argv += [option, str(db[key])]

    # when
    dump = subprocess.run(argv, env=env, check=True, capture_output=True).stdout  # noqa: S603

    # then
    assert CHART_NO.encode() in dump
    for text in plaintexts():
        assert text not in dump


@pytest.mark.django_db
@pytest.mark.parametrize("stored_as", PHONE_SPELLINGS)
def test_every_phone_spelling_finds_the_same_patient(stored_as):
    # given
    patient = PatientFactory(phone=stored_as)
    PatientFactory(phone="0922-000-111")

    # when
    found = [list(patient_search(spelling)) for spelling in PHONE_SPELLINGS]

    # then
    assert found == [[patient]] * len(PHONE_SPELLINGS)


def test_blind_index_is_hmac_sha256_of_domain_and_value_under_the_key(settings):
    # Stored digests must never change with the code that computes them: every search and
    # match would silently find nothing. Two keys in turn: the keyed HMAC is kept per key.
    for raw in (settings.BLIND_INDEX_KEY, base64.urlsafe_b64encode(os.urandom(32)).decode()):
        settings.BLIND_INDEX_KEY = raw
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        for domain, value in (("phone", "+886912345678"), ("name", "林美玲"), ("email", "")):
            expected = hmac.new(key, f"{domain}\x00{value}".encode(), hashlib.sha256).hexdigest()
            assert crypto.blind_index(domain, value) == expected
            assert crypto.blind_index(domain, value) == expected  # and again, from the copy


@pytest.mark.django_db
def test_name_search_ignores_spacing_and_full_width():
    patient = PatientFactory(name="Chen Mei Ling")

    assert list(patient_search("ＣＨＥＮ　mei ling")) == [patient]


@pytest.mark.django_db
def test_token_copied_to_another_patient_fails_instead_of_showing_it():
    # given: someone with database access copies patient A's name token onto patient B
    a = PatientFactory(name=NAME)
    b = PatientFactory(name="林志明")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE patients_patient SET name = (SELECT name FROM patients_patient WHERE id = %s)"
            " WHERE id = %s",
            [a.pk, b.pk],
        )

    # when
    moved = Patient.objects.get(pk=b.pk)

    # then
    with pytest.raises(crypto.DecryptionError) as failure:
        _ = moved.name
    assert NAME not in str(failure.value)
    assert "v1." not in str(failure.value)
    assert Patient.objects.get(pk=a.pk).name == NAME


@pytest.mark.django_db
def test_token_copied_to_another_column_of_the_same_row_fails():
    # given
    patient = PatientFactory(phone="0912-345-678", email=EMAIL)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE patients_patient SET email = phone WHERE id = %s", [patient.pk])

    # when
    moved = Patient.objects.get(pk=patient.pk)

    # then
    with pytest.raises(crypto.DecryptionError):
        _ = moved.email
    assert moved.phone == "+886912345678"


@pytest.mark.django_db
def test_tampered_token_fails_to_decrypt():
    patient = PatientFactory(name=NAME)
    token = Patient.objects.filter(pk=patient.pk).values_list("name", flat=True).get().token
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE patients_patient SET name = %s WHERE id = %s", [flipped, patient.pk])

    with pytest.raises(crypto.DecryptionError):
        _ = Patient.objects.get(pk=patient.pk).name


@pytest.mark.django_db
def test_reading_with_the_wrong_key_raises(settings):
    # given
    patient = PatientFactory(name=NAME)

    # when
    settings.FIELD_ENCRYPTION_KEYS = [new_key()]
    reloaded = Patient.objects.get(pk=patient.pk)

    # then
    with pytest.raises(crypto.DecryptionError, match="not in FIELD_ENCRYPTION_KEYS"):
        _ = reloaded.name


@pytest.mark.django_db
def test_token_relabelled_with_another_key_id_fails(settings):
    # given: a token whose key-id prefix is rewritten to name a key that is in the keyring
    other = new_key()
    settings.FIELD_ENCRYPTION_KEYS = [*django_settings.FIELD_ENCRYPTION_KEYS, other]
    patient = PatientFactory(name=NAME)
    token = Patient.objects.filter(pk=patient.pk).values_list("name", flat=True).get().token
    version, _kid, body = token.split(".")
    relabelled = f"{version}.{key_id_of(other)}.{body}"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE patients_patient SET name = %s WHERE id = %s", [relabelled, patient.pk]
        )

    # then
    with pytest.raises(crypto.DecryptionError):
        _ = Patient.objects.get(pk=patient.pk).name


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        lambda: list(Patient.objects.filter(name=NAME)),
        lambda: list(Patient.objects.filter(name__in=[NAME])),
        lambda: list(Patient.objects.filter(phone="0912345678")),
        lambda: list(Patient.objects.exclude(email=EMAIL)),
        lambda: list(Patient.objects.filter(name__icontains="陳")),
        lambda: list(Patient.objects.filter(email__iexact=EMAIL)),
        lambda: list(Patient.objects.filter(phone__startswith="0912")),
        lambda: Patient.objects.update(name=NAME),
        lambda: Visit.objects.update(note="plaintext note"),
    ],
    ids=[
        "filter",
        "in",
        "phone",
        "exclude",
        "icontains",
        "iexact",
        "startswith",
        "update",
        "visit-update",
    ],
)
def test_plaintext_in_a_query_on_an_encrypted_field_raises(query):
    VisitFactory(patient=PatientFactory(name=NAME, email=EMAIL))

    with pytest.raises(TypeError, match="encrypted"):
        query()


@pytest.mark.django_db
def test_rotation_interrupted_midway_resumes_and_leaves_everything_readable(settings, monkeypatch):
    # given: rows written under key A, then B put in front of it
    key_a, key_b = new_key(), new_key()
    settings.FIELD_ENCRYPTION_KEYS = [key_a]
    patients = [PatientFactory(name=f"輪替病人{i}") for i in range(5)]
    visit = VisitFactory(patient=patients[0], note="複診 血壓穩定")
    settings.FIELD_ENCRYPTION_KEYS = [key_b, key_a]
    a, b = key_id_of(key_a), key_id_of(key_b)

    # when: the run dies on the fourth patient, in the second batch of two
    original_seal = EncryptedTextField.seal

    def seal_or_die(field, instance):
        if instance.pk == patients[3].pk:
            raise RuntimeError("connection lost")
        return original_seal(field, instance)

    monkeypatch.setattr(EncryptedTextField, "seal", seal_or_die)
    with pytest.raises(RuntimeError):
        encryption_rotate(batch_size=2)
    monkeypatch.undo()

    # then: the first batch is done; the second, including the row it had rewritten, rolled back
    assert [stored_key_ids(p) for p in patients] == [{b}, {b}, {a}, {a}, {a}]
    assert [Patient.objects.get(pk=p.pk).name for p in patients] == [p.name for p in patients]

    # when: run again
    rewritten = encryption_rotate(batch_size=2)

    # then
    assert rewritten == 4  # three patients and the visit
    assert all(stored_key_ids(obj) == {b} for obj in [*patients, visit])

    # when: the old key is removed
    settings.FIELD_ENCRYPTION_KEYS = [key_b]

    # then
    assert [Patient.objects.get(pk=p.pk).name for p in patients] == [p.name for p in patients]
    assert Visit.objects.get(pk=visit.pk).note == "複診 血壓穩定"
    assert Patient.objects.get(pk=patients[0].pk).phone == patients[0].phone
    assert encryption_rotate(batch_size=2) == 0


@pytest.mark.django_db
def test_rotation_keeps_updated_at_and_blind_indexes(settings):
    # given
    key_a = new_key()
    settings.FIELD_ENCRYPTION_KEYS = [key_a]
    patient = PatientFactory(name=NAME, phone="0912-345-678")
    before = Patient.objects.values("updated_at", "name_bidx", "phone_bidx").get(pk=patient.pk)
    settings.FIELD_ENCRYPTION_KEYS = [new_key(), key_a]

    # when
    encryption_rotate()

    # then
    after = Patient.objects.values("updated_at", "name_bidx", "phone_bidx").get(pk=patient.pk)
    assert after == before
    assert list(patient_search("0912345678")) == [patient]


@pytest.mark.django_db
def test_rotation_stops_on_a_value_whose_key_was_removed(settings):
    # given: B is the only key, but a row is still under A
    key_a = new_key()
    settings.FIELD_ENCRYPTION_KEYS = [key_a]
    patient = PatientFactory()
    settings.FIELD_ENCRYPTION_KEYS = [new_key()]

    # when / then
    with pytest.raises(crypto.DecryptionError, match=f"Patient id {patient.pk}"):
        encryption_rotate()


@pytest.mark.django_db
def test_rotate_keys_command_reports_progress_and_dry_run_changes_nothing(settings):
    # given
    key_a, key_b = new_key(), new_key()
    settings.FIELD_ENCRYPTION_KEYS = [key_a]
    patients = PatientFactory.create_batch(3)
    settings.FIELD_ENCRYPTION_KEYS = [key_b, key_a]

    # when
    dry = StringIO()
    call_command("rotate_keys", "--dry-run", "--batch-size", "2", stdout=dry)

    # then
    assert "Patient: 2/3 rows, 2 under older keys" in dry.getvalue()
    assert "Patient: 3/3 rows, 3 under older keys" in dry.getvalue()
    assert "Total: 3 rows not yet under the newest key" in dry.getvalue()
    assert all(stored_key_ids(p) == {key_id_of(key_a)} for p in patients)

    # when
    out = StringIO()
    call_command("rotate_keys", "--batch-size", "2", stdout=out)

    # then
    assert "Patient: 3/3 rows, 3 re-encrypted" in out.getvalue()
    assert f"Total: 3 rows re-encrypted under key {key_id_of(key_b)}." in out.getvalue()
    assert all(stored_key_ids(p) == {key_id_of(key_b)} for p in patients)
