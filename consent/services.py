from datetime import datetime

from django.db import transaction
from django.utils import timezone

from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose, Source
from patients.models import Patient


@transaction.atomic
def consent_record(
    *,
    patient: Patient,
    purpose: str,
    channel: str,
    action: str,
    source: str,
    recorded_by=None,
    evidence: str = "",
    at: datetime | None = None,
) -> ConsentEntry:
    """Append a grant or withdrawal to the ledger and update the current state with it.

    A back-dated entry (a paper form typed in late) is kept in the ledger but doesn't undo a
    newer decision. Raises ValueError for an unknown purpose, channel, action or source.
    """
    for value, choices in (
        (purpose, Purpose),
        (channel, Channel),
        (action, Action),
        (source, Source),
    ):
        if value not in choices.values:
            raise ValueError(f"unknown {choices.__name__.lower()}: {value!r}")
    entry = ConsentEntry.objects.create(
        patient=patient,
        purpose=purpose,
        channel=channel,
        action=action,
        source=source,
        recorded_by=recorded_by,
        evidence=evidence,
        recorded_at=at or timezone.now(),
    )
    state = (
        ConsentState.objects.select_for_update()
        .filter(patient=patient, purpose=purpose, channel=channel)
        .first()
    )
    granted = action == Action.GRANT
    if state is None:
        ConsentState.objects.create(
            patient=patient,
            purpose=purpose,
            channel=channel,
            granted=granted,
            entry=entry,
            changed_at=entry.recorded_at,
        )
    elif entry.recorded_at >= state.changed_at:
        state.granted, state.entry, state.changed_at = granted, entry, entry.recorded_at
        state.save(update_fields=["granted", "entry", "changed_at"])
    return entry


@transaction.atomic
def consent_withdraw_all(
    *, patient: Patient, source: str, recorded_by=None, evidence: str = "", channel: str = ""
) -> int:
    """Withdraw every granted purpose (on one channel, or all); returns how many were withdrawn."""
    granted = ConsentState.objects.filter(patient=patient, granted=True)
    if channel:
        granted = granted.filter(channel=channel)
    count = 0
    for state in list(granted):
        consent_record(
            patient=patient,
            purpose=state.purpose,
            channel=state.channel,
            action=Action.WITHDRAW,
            source=source,
            recorded_by=recorded_by,
            evidence=evidence,
        )
        count += 1
    return count
