"""The one place that answers "may we contact this patient for PURPOSE on CHANNEL?"."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, Subquery

from consent.models import Channel, ConsentState
from patients.models import Patient

# The blind index of a channel's address is set exactly when the patient has that address.
CONTACT_POINT: dict[str, str] = {
    Channel.SMS: "phone_bidx",
    Channel.LINE: "line_user_id_bidx",
    Channel.EMAIL: "email_bidx",
}
# A flag the address must also have: a landline or 0800 number is kept for calls, never texted.
CONTACT_POINT_FLAG: dict[str, str] = {Channel.SMS: "phone_is_mobile"}


def has_contact_point(channel: str, prefix: str = "") -> Q:
    """Q for "the patient at `prefix` has an address `channel` can deliver to"."""
    q = Q(**{f"{prefix}{CONTACT_POINT[channel]}__isnull": False})
    if channel in CONTACT_POINT_FLAG:
        q &= Q(**{f"{prefix}{CONTACT_POINT_FLAG[channel]}": True})
    return q


class Reason:
    ERASED = "erased"
    NO_CONSENT = "no_consent"
    WITHDRAWN = "withdrawn"
    NO_CONTACT_POINT = "no_contact_point"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def may_contact(*, patient: Patient, purpose: str, channel: str) -> Decision:
    """Whether `patient` may be messaged for `purpose` on `channel`, read fresh from the database.

    Raises KeyError for an unknown channel.
    """
    # One statement: the erasure, the address and the consent as of the same moment.
    state_now = ConsentState.objects.filter(
        patient_id=OuterRef("pk"), purpose=purpose, channel=channel
    ).values("granted")
    row = (
        Patient.objects.filter(pk=patient.pk)
        .values(
            "erased_at",
            reachable=ExpressionWrapper(has_contact_point(channel), BooleanField()),
            state=Subquery(state_now),
        )
        .first()
    )
    if row is None or row["erased_at"] is not None:
        return Decision(False, Reason.ERASED)
    state = row["state"]  # None: nothing recorded for this purpose and channel
    if state is None:
        return Decision(False, Reason.NO_CONSENT)
    if not state:
        return Decision(False, Reason.WITHDRAWN)
    if not row["reachable"]:
        return Decision(False, Reason.NO_CONTACT_POINT)
    return Decision(True)


def patient_prefix(patient_ref: str) -> str:
    """Lookup prefix to the patient from a patient id path: "patient_id" → "patient__"."""
    path = patient_ref.removesuffix("id").removesuffix("_")
    return f"{path}__" if path else ""


def consent_annotations(*, purpose: str, channels: list[str], patient_ref: str) -> dict:
    """Per-channel facts `choose_channel` needs, as annotations for one set-based query.

    `patient_ref` is the path to the patient from the queried model ("id", "patient_id" or
    "prescription__patient_id"); the annotations are named `<channel>_granted`,
    `<channel>_withdrawn`, `<channel>_address` plus `erased`.
    """
    prefix = patient_prefix(patient_ref)
    states = ConsentState.objects.filter(patient_id=OuterRef(patient_ref), purpose=purpose)
    annotations: dict[str, Any] = {
        "erased": ExpressionWrapper(
            Q(**{f"{prefix}erased_at__isnull": False}), output_field=BooleanField()
        )
    }
    for channel in channels:
        annotations[f"{channel}_granted"] = Exists(states.filter(channel=channel, granted=True))
        annotations[f"{channel}_withdrawn"] = Exists(states.filter(channel=channel, granted=False))
        annotations[f"{channel}_address"] = ExpressionWrapper(
            has_contact_point(channel, prefix), output_field=BooleanField()
        )
    return annotations


def choose_channel(row: Mapping[str, Any], channels: list[str]) -> Decision:
    """First channel in `channels` the annotated `row` may be contacted on.

    Returns Decision(True, channel) or Decision(False, reason), with the same reasons and
    precedence as `may_contact`.
    """
    if row["erased"]:
        return Decision(False, Reason.ERASED)
    for channel in channels:
        if row[f"{channel}_granted"] and row[f"{channel}_address"]:
            return Decision(True, channel)
    if any(row[f"{channel}_granted"] for channel in channels):
        return Decision(False, Reason.NO_CONTACT_POINT)
    if any(row[f"{channel}_withdrawn"] for channel in channels):
        return Decision(False, Reason.WITHDRAWN)
    return Decision(False, Reason.NO_CONSENT)
