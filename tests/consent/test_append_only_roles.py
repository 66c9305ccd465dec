"""The two-role PostgreSQL deployment of deploy/postgres-roles.sql, for real.

A scratch database and two scratch roles are made with the script, as an operator would; the
owner role runs the migrations; the app role then does the app's ordinary work through the
app's own code (seeding, planning, sending, staff pages, consent, erasure, the django-q2 queue,
sessions), and, connected directly, is refused everything that would rewrite history: changing
or removing ledger and audit rows, TRUNCATE, turning triggers off or dropping them, and setting
current consent without a ledger row. The owner, who could drop the triggers, is still refused
by them.
"""

import secrets
import shutil

import psycopg
import pytest
from django.db import connection

from tests.deployment import APPEND_ONLY, Deployment, apply_roles_sql, drop, manage

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="roles are PostgreSQL's"),
    pytest.mark.skipif(
        shutil.which("psql") is None, reason="psql (the operator's tool) is missing"
    ),
]


@pytest.fixture(scope="module")
def deployment():
    """Roles and database from deploy/postgres-roles.sql, migrated by the owner role."""
    suffix = secrets.token_hex(4)
    owner, app = f"crm_audit_owner_{suffix}", f"crm_audit_app_{suffix}"
    deployment = Deployment(
        db=f"crm_audit_roles_{suffix}",
        owner=owner,
        app=app,
        passwords={owner: secrets.token_urlsafe(16), app: secrets.token_urlsafe(16)},
    )
    try:
        apply_roles_sql(deployment)
        migrated = manage(deployment, owner, "migrate", "--verbosity", "0")
        assert migrated.returncode == 0, migrated.stderr
        yield deployment
    finally:
        drop(deployment)


APP_WORK = """
from datetime import timedelta

from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client
from django.test.utils import setup_test_environment
from django.urls import reverse
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import Schedule, Success
from django_q.scheduler import scheduler
from django_q.tasks import async_task

from consent.models import ConsentState
from consent.services import consent_record
from patients.models import AuditEntry, Patient
from patients.services import patient_erase

setup_test_environment()
call_command("seed_demo", patients=6)
call_command("setup_schedules")
call_command("run_rules")
call_command("dispatch_messages")

# The planner's writes (COPY into a temporary table, then INSERT … ON CONFLICT): the app role
# may create temporary tables. run_rules above logs a failing rule and goes on; this does not.
from campaigns.models import Rule, Skip
from clinic_crm.copy_insert import insert_new

skip = Skip(
    rule=Rule.objects.first(),
    patient=Patient.objects.first(),
    occurrence_key="roles-check",
    reason="no_consent",
    at=timezone.now(),
)
insert_new(Skip, [skip], unique_fields=["rule", "patient", "occurrence_key"], update_fields=["at"])
assert Skip.objects.filter(occurrence_key="roles-check").exists()

desk = User.objects.create_user("desk-roles", password="correct horse 42", is_staff=True)
desk.groups.add(Group.objects.get(name="Front desk"))
manager = User.objects.create_user("manager-roles", is_staff=True)
manager.groups.add(Group.objects.get(name="Clinic manager"))
client = Client()
login = client.post(
    reverse("admin:login"),
    {"username": "desk-roles", "password": "correct horse 42", "next": "/admin/"},
)
assert login.status_code == 302, login.status_code
patient = Patient.objects.order_by("pk").first()
assert client.get(reverse("admin:patients_patient_changelist"), {"q": "x"}).status_code == 200
assert client.get(reverse("admin:patients_patient_change", args=[patient.pk])).status_code == 200
autocomplete = client.get(
    reverse("admin:autocomplete"),
    {"app_label": "patients", "model_name": "visit", "field_name": "patient", "term": ""},
)
assert autocomplete.status_code == 200, autocomplete.status_code
added = client.post(
    reverse("admin:consent_consententry_add"),
    {
        "patient": patient.pk,
        "purpose": "relationship",
        "channel": "email",
        "action": "grant",
        "source": "front_desk",
    },
)
assert added.status_code == 302, added.status_code
assert LogEntry.objects.filter(user=desk).exists()
assert ConsentState.objects.get(patient=patient, purpose="relationship", channel="email").granted
consent_record(
    patient=patient,
    purpose="relationship",
    channel="email",
    action="withdraw",
    source="patient_request",
)
patient_erase(patient=patient, actor=manager)
assert AuditEntry.objects.filter(actor=desk).count() >= 3
assert AuditEntry.objects.filter(actor=manager, action="erase", patients=patient).exists()
client.logout()
call_command("clearsessions")

broker = get_broker()
Schedule.objects.update(next_run=timezone.now() - timedelta(minutes=1))
scheduler(broker=broker)
queued = 0
while task := broker.dequeue():
    for task_id, _payload in task:
        broker.acknowledge(task_id)
        queued += 1
assert queued >= 1, queued
async_task("math.floor", 1.5, sync=True)
assert Success.objects.filter(func="math.floor").exists()
print("app work done")
"""


@pytest.fixture(scope="module")
def app_work(deployment):
    """The app's own code, run as the app role; leaves rows in every guarded table."""
    return manage(deployment, deployment.app, "shell", "--no-imports", "-c", APP_WORK)


def test_the_app_role_does_all_of_the_apps_ordinary_work(app_work):
    assert app_work.returncode == 0, app_work.stderr[-3000:]
    assert "app work done" in app_work.stdout


def _record_consent_like_the_app(conn, patient_id: int, action: str, days: int) -> int:
    """What consent_record does: a ledger entry, then the state row beside it, in one
    transaction. `days` ahead, so the entry is the newest for the patient."""
    with conn.transaction():
        entry_id, at = conn.execute(
            "INSERT INTO consent_consententry (patient_id, purpose, channel, action, source,"
            " recorded_at, evidence) VALUES (%s, 'care', 'line', %s, 'front_desk',"
            " now() + make_interval(days => %s), '') RETURNING id, recorded_at",
            [patient_id, action, days],
        ).fetchone()
        state = conn.execute(
            "SELECT id FROM consent_consentstate WHERE patient_id = %s AND purpose = 'care'"
            " AND channel = 'line' FOR UPDATE",
            [patient_id],
        ).fetchone()
        if state is None:
            conn.execute(
                "INSERT INTO consent_consentstate (patient_id, purpose, channel, granted,"
                " entry_id, changed_at) VALUES (%s, 'care', 'line', %s, %s, %s)",
                [patient_id, action == "grant", entry_id, at],
            )
        else:
            conn.execute(
                "UPDATE consent_consentstate SET granted = %s, entry_id = %s, changed_at = %s"
                " WHERE id = %s",
                [action == "grant", entry_id, at, state[0]],
            )
    return entry_id


def _a_patient(conn, offset: int) -> int:
    return conn.execute(
        "SELECT id FROM patients_patient ORDER BY id OFFSET %s LIMIT 1", [offset]
    ).fetchone()[0]


def test_the_app_role_records_consent_and_audit_rows_the_way_the_app_does(deployment, app_work):
    with deployment.connect(deployment.app) as conn:
        patient_id = _a_patient(conn, 1)

        # when consent is granted, then withdrawn, as consent_record does it
        _record_consent_like_the_app(conn, patient_id, "grant", days=1)
        withdrawal_id = _record_consent_like_the_app(conn, patient_id, "withdraw", days=2)
        # and an audit entry is written with its link, as audit_record does it
        with conn.transaction():
            audit_id = conn.execute(
                "INSERT INTO patients_auditentry (at, actor_name, action, path, detail)"
                " VALUES (now(), 'system', 'view', '/admin/', '') RETURNING id"
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO patients_auditlink (entry_id, patient_id, patient_uuid)"
                " SELECT %s, id, uuid FROM patients_patient WHERE id = %s",
                [audit_id, patient_id],
            )

        # then it is all there
        state = conn.execute(
            "SELECT granted, entry_id FROM consent_consentstate"
            " WHERE patient_id = %s AND purpose = 'care' AND channel = 'line'",
            [patient_id],
        ).fetchone()
        links = conn.execute(
            "SELECT count(*) FROM patients_auditlink WHERE entry_id = %s", [audit_id]
        ).fetchone()
    assert state == (False, withdrawal_id)
    assert links == (1,)


def test_tables_a_later_migration_creates_are_granted_to_the_app_role(deployment):
    # given a table the owner creates after the roles script ran (as a later migrate would)
    with deployment.connect(deployment.owner) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS later_feature (id integer PRIMARY KEY)")

    # when / then the app role may use its rows
    with deployment.connect(deployment.app) as conn:
        conn.execute("INSERT INTO later_feature VALUES (1) ON CONFLICT DO NOTHING")
        conn.execute("UPDATE later_feature SET id = 1")
        assert conn.execute("SELECT count(*) FROM later_feature").fetchone() == (1,)


REWRITING_HISTORY = [
    "UPDATE consent_consententry SET action = 'grant'",
    "UPDATE patients_auditentry SET actor_name = 'nobody'",
    "UPDATE patients_auditlink SET patient_id = patient_id",
    "DELETE FROM consent_consententry",
    "DELETE FROM patients_auditentry",
    "DELETE FROM patients_auditlink",
    "TRUNCATE consent_consententry CASCADE",
    "TRUNCATE patients_auditentry CASCADE",
    "TRUNCATE patients_auditlink",
    "UPDATE consent_consentstate SET granted = NOT granted",
    "DELETE FROM consent_consentstate",
    "TRUNCATE consent_consentstate",
]
ALTERING_THE_GUARDS = [
    "ALTER TABLE consent_consententry DISABLE TRIGGER consent_consententry_append_only",
    "ALTER TABLE consent_consententry DISABLE TRIGGER ALL",
    "ALTER TABLE patients_auditentry DISABLE TRIGGER USER",
    "ALTER TABLE consent_consentstate DISABLE TRIGGER consent_consentstate_follows_ledger",
    "DROP TRIGGER patients_auditlink_append_only ON patients_auditlink",
    "DROP TRIGGER patients_auditentry_append_only_truncate ON patients_auditentry",
    "DROP TRIGGER consent_consentstate_follows_ledger ON consent_consentstate",
    "DROP FUNCTION consent_consententry_append_only() CASCADE",
    "CREATE OR REPLACE FUNCTION consent_consentstate_follows_ledger() RETURNS trigger"
    " AS $$ BEGIN RETURN NEW; END $$ LANGUAGE plpgsql",
    "ALTER TABLE consent_consententry RENAME TO consent_old",
    "DROP TABLE patients_auditlink",
    "CREATE TABLE sneaky (id integer)",
    "SET session_replication_role = replica",
]
# A patient is erased, never deleted (patients/0016): nothing to guard with a foreign key.
REMOVING_PATIENTS = ["DELETE FROM patients_patient", "TRUNCATE patients_patient CASCADE"]
# Refused for want of a right (42501, which "must be owner" is too), or by the triggers
# (42501 for append-only tables, 23514 for current consent): a typo's error would not match.
REFUSED = {"42501", "23514"}


def _rows(deployment: Deployment) -> dict[str, int]:
    with deployment.connect(deployment.owner) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in [*APPEND_ONLY, "consent_consentstate", "patients_patient"]
        }


@pytest.mark.parametrize("statement", REWRITING_HISTORY + ALTERING_THE_GUARDS + REMOVING_PATIENTS)
def test_the_app_role_cannot_rewrite_history_or_lift_the_guards(deployment, app_work, statement):
    # given rows in every guarded table
    before = _rows(deployment)
    assert all(before.values()), before

    # when / then
    with deployment.connect(deployment.app) as conn, pytest.raises(psycopg.Error) as refused:
        conn.execute(statement)
    assert refused.value.sqlstate in REFUSED, refused.value
    assert _rows(deployment) == before


@pytest.mark.parametrize("statement", REWRITING_HISTORY)
def test_even_the_owner_is_refused_by_the_triggers(deployment, app_work, statement):
    before = _rows(deployment)
    assert all(before.values()), before

    with deployment.connect(deployment.owner) as conn, pytest.raises(psycopg.Error) as refused:
        conn.execute(statement)

    # The owner has every right on its tables: the refusal is the triggers'.
    assert refused.value.sqlstate in REFUSED, refused.value
    assert "PL/pgSQL function" in (refused.value.diag.context or "")
    assert _rows(deployment) == before


def test_the_app_role_cannot_set_consent_without_the_ledger_saying_so(deployment, app_work):
    with deployment.connect(deployment.app) as conn:
        # given a patient who granted, then withdrew, LINE consent
        patient_id = _a_patient(conn, 2)
        grant_id = _record_consent_like_the_app(conn, patient_id, "grant", days=1)
        _record_consent_like_the_app(conn, patient_id, "withdraw", days=2)

        # when the state is flipped with no ledger row, then it is refused
        with pytest.raises(psycopg.Error, match="say what its ledger entry says"):
            conn.execute(
                "UPDATE consent_consentstate SET granted = true"
                " WHERE patient_id = %s AND purpose = 'care' AND channel = 'line'",
                [patient_id],
            )
        # when the state is pointed back at the older grant, then it is refused
        with pytest.raises(psycopg.Error, match="newest ledger entry"):
            conn.execute(
                "UPDATE consent_consentstate s SET granted = true, entry_id = e.id,"
                " changed_at = e.recorded_at FROM consent_consententry e"
                " WHERE e.id = %s AND s.patient_id = e.patient_id AND s.purpose = e.purpose"
                " AND s.channel = e.channel",
                [grant_id],
            )
        # when a state names an entry about another purpose × channel, then it is refused
        with pytest.raises(psycopg.Error, match="say what its ledger entry says"):
            conn.execute(
                "INSERT INTO consent_consentstate (patient_id, purpose, channel, granted,"
                " entry_id, changed_at) SELECT patient_id, 'relationship', 'line', true, id,"
                " recorded_at FROM consent_consententry WHERE id = %s",
                [grant_id],
            )
        granted = conn.execute(
            "SELECT granted FROM consent_consentstate"
            " WHERE patient_id = %s AND purpose = 'care' AND channel = 'line'",
            [patient_id],
        ).fetchone()
    assert granted == (False,)
