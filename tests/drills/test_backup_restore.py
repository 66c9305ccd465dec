"""Backup drill: the README's pg_dump routine, restored into a fresh database, gives back every
patient readable with the same keys, the consent ledger and the audit log intact and still
append-only; with other keys the app refuses to start and nothing is readable."""

import dataclasses
import secrets
import shutil
import subprocess

import psycopg
import pytest
from django.db import connection

from tests.clinic_crm.test_settings import new_key
from tests.deployment import (
    APPEND_ONLY,
    Deployment,
    apply_roles_sql,
    drop,
    manage,
    superuser_env,
)

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL backup drill"),
    pytest.mark.skipif(
        not (shutil.which("psql") and shutil.which("pg_dump") and shutil.which("pg_restore")),
        reason="psql, pg_dump and pg_restore (the operator's tools) are missing",
    ),
]

WORK = """
from django.core.management import call_command
from consent.services import consent_record
from patients.models import Patient
from patients.services import audit_record
call_command("seed_demo", patients=30, seed=7)
patient = Patient.objects.order_by("pk").first()
consent_record(patient=patient, purpose="care", channel="sms", action="withdraw",
               source="patient_request")
audit_record(actor="backup drill", action="view", patients=[patient], detail="backup drill")
"""

# What a person would check after a restore: every patient's name and phone decrypt, and the
# counts of the ledger and the audit log (a digest, so no patient data reaches the test log).
READ_BACK = """
import hashlib
from consent.models import ConsentEntry
from patients.models import AuditEntry, Patient
names = hashlib.sha256()
for patient in Patient.objects.order_by("pk").iterator():
    names.update(f"{patient.name}|{patient.phone}|{patient.national_id}".encode())
print("patients", Patient.objects.count(), names.hexdigest())
print("ledger", ConsentEntry.objects.count())
print("audit", AuditEntry.objects.count())
"""


def run(*argv: str) -> None:
    result = subprocess.run(  # noqa: S603  # the operator's own tools
        argv, env=superuser_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def original():
    suffix = secrets.token_hex(4)
    owner, app = f"crm_drill_owner_{suffix}", f"crm_drill_app_{suffix}"
    deployment = Deployment(
        db=f"crm_drill_{suffix}",
        owner=owner,
        app=app,
        passwords={owner: secrets.token_urlsafe(16), app: secrets.token_urlsafe(16)},
    )
    restored = dataclasses.replace(deployment, db=f"crm_drill_restored_{suffix}")
    try:
        apply_roles_sql(deployment)
        migrated = manage(deployment, owner, "migrate", "--verbosity", "0")
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        worked = manage(deployment, app, "shell", "--no-imports", "-c", WORK)
        assert worked.returncode == 0, worked.stderr[-2000:]
        yield deployment, restored
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **_admin()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{restored.db}" WITH (FORCE)')
        drop(deployment)


def _admin() -> dict[str, object]:
    admin = connection.settings_dict
    return {
        "host": admin.get("HOST") or "localhost",
        "port": admin.get("PORT") or 5432,
        "user": admin.get("USER") or None,
        "password": admin.get("PASSWORD") or None,
    }


@pytest.fixture(scope="module")
def restored(original, tmp_path_factory):
    """The README's routine: pg_dump as the owner, a fresh database from the roles script,
    pg_restore as the owner in one transaction."""
    deployment, restored = original
    dump = tmp_path_factory.mktemp("backup") / "crm.dump"
    run("pg_dump", "--format=custom", f"--file={dump}", deployment.url(deployment.owner))
    apply_roles_sql(restored)
    run(
        "pg_restore",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={restored.url(restored.owner)}",
        str(dump),
    )
    return restored


def test_the_restored_database_reads_back_the_same_patients_ledger_and_audit(original, restored):
    deployment, _ = original
    before = manage(deployment, deployment.app, "shell", "--no-imports", "-c", READ_BACK)
    after = manage(restored, restored.app, "shell", "--no-imports", "-c", READ_BACK)

    assert before.returncode == 0, before.stderr[-2000:]
    assert after.returncode == 0, after.stderr[-2000:]
    assert after.stdout == before.stdout
    assert "patients 30 " in after.stdout
    assert "ledger 0" not in after.stdout and "audit 0" not in after.stdout


def test_the_restored_app_starts_with_the_same_keys(restored):
    checked = manage(restored, restored.app, "check", "--database", "default")
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_the_restored_ledger_and_audit_log_are_still_append_only(restored):
    with restored.connect(restored.app) as conn:
        for table in APPEND_ONLY:
            for statement in (f"UPDATE {table} SET id = id", f"DELETE FROM {table}"):  # noqa: S608
                with pytest.raises(psycopg.Error):
                    conn.execute(statement)
            with pytest.raises(psycopg.Error):
                conn.execute(f"TRUNCATE {table}")


def test_with_other_keys_the_restored_app_refuses_to_start_and_reads_nothing(restored):
    wrong = {"FIELD_ENCRYPTION_KEYS": new_key(), "BLIND_INDEX_KEY": new_key()}

    checked = manage(restored, restored.app, "check", "--database", "default", env=wrong)
    read = manage(restored, restored.app, "shell", "--no-imports", "-c", READ_BACK, env=wrong)

    assert checked.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS" in checked.stderr or "BLIND_INDEX_KEY" in checked.stderr
    assert read.returncode != 0
    assert "patients 30" not in read.stdout
