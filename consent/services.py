from datetime import datetime

from django.db import NotSupportedError, router, transaction
from django.utils import timezone

from clinic_crm.copy_insert import insert_new
from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose, Source
from patients.models import Patient

# Each field's values as a set (a choices class builds its `.values` list anew on every read).
CHOICES = {
    kind: frozenset(choices.values)
    for kind, choices in (
        ("purpose", Purpose),
        ("channel", Channel),
        ("action", Action),
        ("source", Source),
    )
}


def _check_choices(**values: str) -> None:
    """Raises ValueError naming the first value that isn't one of its field's choices."""
    for kind, value in values.items():
        if value not in CHOICES[kind]:
            raise ValueError(f"unknown {kind}: {value!r}")


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
    _check_choices(purpose=purpose, channel=channel, action=action, source=source)
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


# Patients per "already has a state?" query.
LOOKUP_BATCH = 500


@transaction.atomic
def consent_bulk_record(*, entries: list[ConsentEntry]) -> int:
    """Append many unsaved ledger entries at once and create the current state they lead to.

    Meant for imports and seeding, for patients with no consent on record yet: per patient ×
    purpose × channel the newest entry becomes the state (on equal times, the later one in
    `entries`). Returns how many entries were written. Raises ValueError for an unknown
    purpose, channel, action or source, or when a patient already has a state for a purpose ×
    channel in `entries` (record those with `consent_record`, which merges with what exists);
    NotSupportedError on a database that doesn't return ids from a bulk insert.
    """
    if not entries:
        return 0
    for entry in entries:
        _check_choices(
            purpose=entry.purpose, channel=entry.channel, action=entry.action, source=entry.source
        )
    # Each state points at its entry, so the entries' ids must come back from the INSERT.
    db = router.db_for_write(ConsentEntry)
    if not transaction.get_connection(db).features.can_return_rows_from_bulk_insert:
        raise NotSupportedError("consent_bulk_record needs ids back from bulk inserts")
    # Entries may have been built around patients saved afterwards; the insert fills in their
    # patient_id, which is why the clash check below comes after it (the rollback undoes it).
    # COPY on PostgreSQL (an import's patients file writes tens of thousands at once).
    insert_new(ConsentEntry, entries)
    latest: dict[tuple[int, str, str], ConsentEntry] = {}
    for entry in entries:
        key = (entry.patient_id, entry.purpose, entry.channel)
        current = latest.get(key)
        if current is None or entry.recorded_at >= current.recorded_at:
            latest[key] = entry
    patient_ids = sorted({patient_id for patient_id, _purpose, _channel in latest})
    for start in range(0, len(patient_ids), LOOKUP_BATCH):
        existing = ConsentState.objects.filter(
            patient_id__in=patient_ids[start : start + LOOKUP_BATCH]
        ).values_list("patient_id", "purpose", "channel")
        for key in existing:
            if key in latest:
                raise ValueError(
                    f"patient {key[0]} already has a {key[1]}/{key[2]} consent state; "
                    "use consent_record"
                )
    insert_new(
        ConsentState,
        [
            ConsentState(
                patient_id=patient_id,
                purpose=purpose,
                channel=channel,
                granted=entry.action == Action.GRANT,
                entry=entry,
                changed_at=entry.recorded_at,
            )
            for (patient_id, purpose, channel), entry in latest.items()
        ],
    )
    return len(entries)
