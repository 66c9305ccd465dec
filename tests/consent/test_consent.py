import datetime as dt

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError
from hypothesis import given, settings
from hypothesis import strategies as st

from clinic_crm.append_only import AppendOnlyError
from consent.models import Channel, ConsentEntry, ConsentState, Purpose
from consent.selectors import choose_channel, consent_annotations, may_contact
from patients.models import Patient
from tests.factories import PatientFactory, grant, withdraw

pytestmark = pytest.mark.django_db


def planned_channel(patient, purpose, channel):
    """The answer the planner gets for this patient from its set-based query."""
    annotations = consent_annotations(purpose=purpose, channels=[channel], patient_ref="id")
    row = Patient.objects.filter(pk=patient.pk).annotate(**annotations).values(*annotations).get()
    return choose_channel(row, [channel])


def test_no_consent_recorded_means_no_contact():
    patient = PatientFactory()

    decision = may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)

    assert not decision.allowed
    assert decision.reason == "no_consent"


def test_grant_allows_only_that_purpose_and_channel():
    patient = PatientFactory()

    grant(patient, Purpose.CARE, Channel.SMS)

    assert may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert not may_contact(patient=patient, purpose=Purpose.RELATIONSHIP, channel=Channel.SMS)
    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.EMAIL)


def test_withdrawal_takes_effect_at_once():
    patient = PatientFactory()
    grant(patient)

    withdraw(patient)

    decision = may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert decision.reason == "withdrawn"
    assert not planned_channel(patient, Purpose.CARE, Channel.SMS)


def test_backdated_grant_does_not_undo_a_newer_withdrawal():
    patient = PatientFactory()
    withdraw(patient)

    grant(patient, at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), evidence="old paper form v1")

    assert not may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS)
    assert ConsentEntry.objects.filter(patient=patient).count() == 2


def test_consent_without_an_address_on_that_channel_is_not_enough():
    patient = PatientFactory(line_user_id="")
    grant(patient, channel=Channel.LINE)

    decision = may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.LINE)

    assert decision.reason == "no_contact_point"
    assert planned_channel(patient, Purpose.CARE, Channel.LINE).reason == "no_contact_point"


def test_ledger_entries_cannot_be_changed_or_deleted_through_the_orm():
    entry = grant(PatientFactory())

    entry.evidence = "tampered"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        ConsentEntry.objects.filter(pk=entry.pk).update(evidence="tampered")
    with pytest.raises(AppendOnlyError):
        ConsentEntry.objects.all().delete()
    assert ConsentEntry.objects.get(pk=entry.pk).evidence == ""


@pytest.mark.skipif(connection.vendor != "postgresql", reason="database trigger is PostgreSQL's")
def test_ledger_refuses_raw_sql_updates_on_postgresql():
    entry = grant(PatientFactory())

    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE consent_consententry SET action = 'grant' WHERE id = %s", [entry.pk])


actions = st.lists(
    st.tuples(
        st.sampled_from([Purpose.CARE, Purpose.RELATIONSHIP]),
        st.sampled_from([Channel.SMS, Channel.LINE, Channel.EMAIL]),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(history=actions)
def test_current_state_always_equals_the_latest_ledger_entry(history):
    with transaction.atomic():
        patient = PatientFactory(line_user_id="U" + "a" * 32)
        for purpose, channel, granted in history:
            (grant if granted else withdraw)(patient, purpose, channel)

        for purpose in Purpose:
            for channel in Channel:
                latest = (
                    ConsentEntry.objects.filter(patient=patient, purpose=purpose, channel=channel)
                    .order_by("-recorded_at", "-id")
                    .first()
                )
                expected = latest is not None and latest.action == "grant"
                allowed = bool(may_contact(patient=patient, purpose=purpose, channel=channel))
                planned = bool(planned_channel(patient, purpose, channel))
                assert allowed == expected == planned
                if latest:
                    state = ConsentState.objects.get(
                        patient=patient, purpose=purpose, channel=channel
                    )
                    assert state.entry_id == latest.pk
        transaction.set_rollback(True)


def test_erased_patient_may_not_be_contacted():
    patient = PatientFactory()
    grant(patient)
    Patient.objects.filter(pk=patient.pk).update(erased_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    assert (
        may_contact(patient=patient, purpose=Purpose.CARE, channel=Channel.SMS).reason == "erased"
    )
    assert planned_channel(patient, Purpose.CARE, Channel.SMS).reason == "erased"
