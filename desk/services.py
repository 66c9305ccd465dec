"""What the front desk does from the day view: mark an appointment attended, no-show, confirmed
by phone or cancelled, undo that, and show a patient's phone number. Each step is audited."""

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core import signing
from django.db import transaction
from django.utils.translation import gettext as _

from desk.selectors import phone_display
from patients.models import Appointment, AuditEntry
from patients.services import audit_record

Status = Appointment.Status
# How long the "undo" of a status change stays valid, in seconds.
UNDO_SECONDS = 15 * 60
_UNDO_SALT = "desk.appointment-undo"


class DeskAction(StrEnum):
    ATTENDED = "attended"
    NO_SHOW = "no_show"
    CONFIRM_PHONE = "confirm_phone"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Transition:
    to: Status
    allowed_from: frozenset[Status]
    confirmed_via: str = ""


TRANSITIONS: dict[DeskAction, Transition] = {
    DeskAction.ATTENDED: Transition(
        Status.ATTENDED, frozenset({Status.BOOKED, Status.CONFIRMED, Status.NO_SHOW})
    ),
    DeskAction.NO_SHOW: Transition(
        Status.NO_SHOW, frozenset({Status.BOOKED, Status.CONFIRMED, Status.ATTENDED})
    ),
    DeskAction.CONFIRM_PHONE: Transition(
        Status.CONFIRMED, frozenset({Status.BOOKED}), Appointment.ConfirmedVia.PHONE
    ),
    DeskAction.CANCEL: Transition(Status.CANCELLED, frozenset({Status.BOOKED, Status.CONFIRMED})),
}


class ActionRefused(Exception):
    """The appointment is not in a state the action applies to (someone changed it meanwhile)."""


@dataclass(frozen=True)
class Undo:
    """Enough to put an appointment back as it was before one desk action."""

    appointment_id: int
    status: str
    confirmed_via: str
    confirmed_at: str  # ISO 8601, or "" when it was not confirmed
    after: str  # the status the action set: undo only while it still holds

    def sign(self) -> str:
        return signing.dumps(asdict(self), salt=_UNDO_SALT, compress=True)

    @classmethod
    def load(cls, token: str) -> "Undo":
        """Raises signing.BadSignature (or SignatureExpired) for a forged or stale token."""
        data = signing.loads(token, salt=_UNDO_SALT, max_age=UNDO_SECONDS)
        return cls(**data)


Actor = AbstractBaseUser | AnonymousUser


def _record(*, actor: Actor, appointment: Appointment, path: str, detail: str) -> None:
    audit_record(
        actor=actor,
        action=AuditEntry.Action.VIEW,
        patients=[appointment.patient_id],
        path=path,
        detail=detail,
    )
    if actor.pk is not None:
        # The appointment's own history in the admin shows the change too.
        LogEntry.objects.log_actions(
            user_id=actor.pk,
            queryset=[appointment],
            action_flag=CHANGE,
            change_message=detail,
            single_object=True,
        )


@transaction.atomic
def appointment_mark(
    *, appointment_id: int, action: DeskAction, actor: Actor, path: str, now: datetime
) -> Undo:
    """Apply one desk action to an appointment and audit it; returns what undoes it.

    Raises Appointment.DoesNotExist, and ActionRefused when the status doesn't allow it.
    """
    appointment = Appointment.objects.select_for_update().get(pk=appointment_id)
    transition = TRANSITIONS[action]
    if appointment.status not in transition.allowed_from:
        raise ActionRefused(appointment.get_status_display())
    undo = Undo(
        appointment_id=appointment.pk,
        status=appointment.status,
        confirmed_via=appointment.confirmed_via,
        confirmed_at=appointment.confirmed_at.isoformat() if appointment.confirmed_at else "",
        after=transition.to,
    )
    appointment.status = transition.to
    if transition.confirmed_via:
        appointment.confirmed_via = transition.confirmed_via
        appointment.confirmed_at = now
    appointment.save(update_fields=["status", "confirmed_via", "confirmed_at", "updated_at"])
    _record(
        actor=actor,
        appointment=appointment,
        path=path,
        detail=f"appointment {appointment.pk}: {undo.status} → {appointment.status}",
    )
    return undo


@transaction.atomic
def appointment_undo(*, undo: Undo, actor: Actor, path: str) -> Appointment:
    """Put the appointment back as it was before a desk action, and audit it.

    Raises Appointment.DoesNotExist, and ActionRefused when its status changed since.
    """
    appointment = Appointment.objects.select_for_update().get(pk=undo.appointment_id)
    if appointment.status != undo.after:
        raise ActionRefused(appointment.get_status_display())
    before = appointment.status
    appointment.status = undo.status
    appointment.confirmed_via = undo.confirmed_via
    appointment.confirmed_at = (
        datetime.fromisoformat(undo.confirmed_at) if undo.confirmed_at else None
    )
    appointment.save(update_fields=["status", "confirmed_via", "confirmed_at", "updated_at"])
    _record(
        actor=actor,
        appointment=appointment,
        path=path,
        detail=f"appointment {appointment.pk}: undo {before} → {appointment.status}",
    )
    return appointment


def appointment_phone_reveal(*, appointment_id: int, actor: Actor, path: str) -> str:
    """The phone number of an appointment's patient, for the desk to call; audited.

    Raises Appointment.DoesNotExist; returns "" when the patient has no phone on file.
    """
    appointment = Appointment.objects.select_related("patient").get(pk=appointment_id)
    audit_record(
        actor=actor,
        action=AuditEntry.Action.VIEW,
        patients=[appointment.patient_id],
        path=path,
        detail=f"phone number, appointment {appointment.pk}",
    )
    phone = appointment.patient.phone or ""
    return phone_display(phone) if phone else ""


def row_actions(status: str) -> list[tuple[str, str]]:
    """The desk actions an appointment in `status` allows, with their button labels, in the
    order the day view shows them."""
    labels = {
        DeskAction.CONFIRM_PHONE: _("Confirmed by phone"),
        DeskAction.ATTENDED: _("Attended"),
        DeskAction.NO_SHOW: _("No-show"),
        DeskAction.CANCEL: _("Cancel"),
    }
    return [
        (action.value, label)
        for action, label in labels.items()
        if status in TRANSITIONS[action].allowed_from
    ]


def action_done_message(action: DeskAction) -> str:
    return {
        DeskAction.ATTENDED: _("Marked attended."),
        DeskAction.NO_SHOW: _("Marked no-show."),
        DeskAction.CONFIRM_PHONE: _("Confirmed by phone."),
        DeskAction.CANCEL: _("Appointment cancelled."),
    }[action]
