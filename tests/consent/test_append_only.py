"""On PostgreSQL the ledger and the audit log refuse TRUNCATE too, and current consent can only
say what the newest ledger entry says: no state is written, changed or removed without one.
The services that write both keep working, on every database."""

import datetime as dt

import pytest
from django.db import DatabaseError, connection, transaction

from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose, Source
from consent.selectors import may_contact
from consent.services import consent_bulk_record
from patients.models import AuditEntry
from patients.services import audit_record
from tests.factories import PatientFactory, grant, withdraw

pytestmark = pytest.mark.django_db

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="database triggers are PostgreSQL's"
)

AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def run(sql: str, params=()) -> None:
    """Run `sql` in a savepoint, after the foreign-key checks this test's writes left pending
    (TRUNCATE refuses to run before them, whatever the triggers say)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(sql, params)


@pytest.fixture
def history():
    """A patient who granted SMS care consent, then withdrew it; an audit entry about them."""
    patient = PatientFactory()
    granted = grant(patient, at=AT)
    withdrawn = withdraw(patient, at=AT + dt.timedelta(days=1))
    audit_record(actor="desk", action=AuditEntry.Action.VIEW, patients=[patient])
    return patient, granted, withdrawn


def counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (ConsentEntry, ConsentState, AuditEntry))


@postgresql_only
@pytest.mark.parametrize(
    "table",
    ["consent_consententry", "consent_consentstate", "patients_auditentry", "patients_auditlink"],
)
def test_truncate_is_refused_even_to_a_superuser(history, table):
    before = counts()

    with pytest.raises(DatabaseError, match="TRUNCATE refused"):
        run(f"TRUNCATE {table} CASCADE")

    assert counts() == before


@postgresql_only
def test_current_consent_cannot_be_flipped_without_a_ledger_row(history):
    patient, _granted, _withdrawn = history

    with pytest.raises(DatabaseError, match="say what its ledger entry says"):
        run("UPDATE consent_consentstate SET granted = true WHERE patient_id = %s", [patient.pk])

    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)


@postgresql_only
def test_current_consent_cannot_go_back_to_an_older_ledger_entry(history):
    patient, granted, _withdrawn = history

    with pytest.raises(DatabaseError, match="newest ledger entry"):
        run(
            "UPDATE consent_consentstate SET granted = true, entry_id = %s, changed_at = %s"
            " WHERE patient_id = %s",
            [granted.pk, granted.recorded_at, patient.pk],
        )

    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)


@postgresql_only
def test_current_consent_cannot_borrow_another_patients_entry(history):
    _patient, granted, _withdrawn = history
    other = PatientFactory()

    with pytest.raises(DatabaseError, match="say what its ledger entry says"):
        run(
            "INSERT INTO consent_consentstate (patient_id, purpose, channel, granted, entry_id,"
            " changed_at) VALUES (%s, 'care', 'sms', true, %s, %s)",
            [other.pk, granted.pk, granted.recorded_at],
        )

    assert not ConsentState.objects.filter(patient=other).exists()


@postgresql_only
def test_current_consent_cannot_change_whose_or_which_it_is(history):
    patient, _granted, _withdrawn = history

    with pytest.raises(DatabaseError, match="keeps its patient, purpose and channel"):
        run("UPDATE consent_consentstate SET channel = 'line' WHERE patient_id = %s", [patient.pk])


@postgresql_only
def test_current_consent_rows_are_never_deleted(history):
    patient, _granted, _withdrawn = history

    with pytest.raises(DatabaseError, match="never removed: DELETE refused"):
        run("DELETE FROM consent_consentstate WHERE patient_id = %s", [patient.pk])

    assert ConsentState.objects.filter(patient=patient).exists()


def test_consent_record_still_moves_the_state_with_each_entry():
    # Whatever the database: the service writes what the trigger (on PostgreSQL) accepts.
    patient = PatientFactory()

    grant(patient, at=AT)
    withdraw(patient, at=AT + dt.timedelta(days=1))
    grant(patient, at=AT - dt.timedelta(days=1), evidence="a paper form typed in late")
    latest = withdraw(patient, at=AT + dt.timedelta(days=1))  # same instant: the later wins

    state = ConsentState.objects.get(patient=patient)
    assert (state.entry_id, state.granted, state.changed_at) == (
        latest.pk,
        False,
        latest.recorded_at,
    )


@pytest.mark.skipif(
    not connection.features.can_return_rows_from_bulk_insert,
    reason="consent_bulk_record needs ids back from bulk inserts",
)
def test_consent_bulk_record_still_writes_the_state_of_the_newest_entry():
    patients = PatientFactory.create_batch(3)
    entries = []
    for patient in patients:
        for action, at in [
            (Action.WITHDRAW, AT),
            (Action.GRANT, AT + dt.timedelta(hours=1)),
            # the same instant: the later in the list wins, as it does in the trigger
            (Action.WITHDRAW, AT + dt.timedelta(hours=1)),
        ]:
            entries.append(
                ConsentEntry(
                    patient=patient,
                    purpose=Purpose.CARE,
                    channel=Channel.EMAIL,
                    action=action,
                    source=Source.PAPER_FORM,
                    recorded_at=at,
                )
            )

    assert consent_bulk_record(entries=entries) == 9

    for patient, last in zip(patients, entries[2::3], strict=True):
        state = ConsentState.objects.get(patient=patient)
        assert (state.entry_id, state.granted) == (last.pk, False)
