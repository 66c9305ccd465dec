"""The front desk's pages. Thin: parse the request, call a selector or service, render."""

from datetime import date, timedelta

from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.core import signing
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from clinic_crm.roles import CLINIC_MANAGER, FRONT_DESK
from desk.selectors import Day, Order, desk_day
from desk.services import (
    ActionRefused,
    DeskAction,
    Undo,
    action_done_message,
    appointment_mark,
    appointment_phone_reveal,
    appointment_undo,
    row_actions,
)
from patients.models import Appointment, AuditEntry
from patients.services import audit_record

LOGIN_URL = reverse_lazy("admin:login")
_UNDO_SESSION_KEY = "desk_undo"


def _chosen_day(request: HttpRequest) -> date:
    today = timezone.localdate()
    try:
        return date.fromisoformat(request.GET.get("day", ""))
    except ValueError:
        return today


def _load_day(request: HttpRequest) -> Day:
    order = Order.TIME if request.GET.get("order") == Order.TIME else Order.ATTENTION
    return desk_day(
        day=_chosen_day(request),
        doctor=request.GET.get("doctor", ""),
        department=request.GET.get("department", ""),
        order=order,
    )


def _audit_list(request: HttpRequest, day: Day, what: str) -> None:
    if day.patient_ids:
        audit_record(
            actor=request.user,
            action=AuditEntry.Action.LIST,
            patients=day.patient_ids,
            path=request.path,
            detail=f"{what} {day.day.isoformat()}",
        )


def _day_context(request: HttpRequest, day: Day) -> dict[str, object]:
    today = timezone.localdate()
    return {
        "view": day,
        "today": today,
        "tomorrow": today + timedelta(days=1),
        "previous_day": day.day - timedelta(days=1),
        "next_day": day.day + timedelta(days=1),
        "doctor": request.GET.get("doctor", ""),
        "department": request.GET.get("department", ""),
        "order": request.GET.get("order", Order.ATTENTION),
        "here": request.get_full_path(),
        # Each row's form posts to <prefix><pk>/mark/: reversed once, not once per row.
        "mark_prefix": reverse("desk:appointment_action", args=[0]).removesuffix("0/mark/"),
        "statuses": Appointment.Status,
    }


@require_GET
@login_required(login_url=LOGIN_URL)
@permission_required("patients.view_appointment", raise_exception=True)
def day(request: HttpRequest) -> HttpResponse:
    """The day view: one day's appointments, their confirmation and reminders; audited as a
    list of the patients shown."""
    view = _load_day(request)
    _audit_list(request, view, "day view")
    context = _day_context(request, view)
    context["undo"] = request.session.pop(_UNDO_SESSION_KEY, None)
    context["can_change"] = can_change = request.user.has_perm("patients.change_appointment")
    # The buttons each status allows, worked out once per page rather than in the template.
    buttons = {status: row_actions(status) for status in Appointment.Status.values}
    context["entries"] = [
        (row, buttons[row.appointment.status] if can_change else []) for row in view.rows
    ]
    return render(request, "desk/day.html", context)


@require_GET
@login_required(login_url=LOGIN_URL)
@permission_required("patients.view_appointment", raise_exception=True)
def calls(request: HttpRequest) -> HttpResponse:
    """The call list: booked appointments not confirmed whose reminders can't reach or did not
    reach the patient. Phone numbers only after a click (audited)."""
    view = _load_day(request)
    rows = [row for row in view.rows if row.to_call]
    shown = Day(
        day=view.day,
        rows=rows,
        doctors=view.doctors,
        departments=view.departments,
        closure=view.closure,
    )
    _audit_list(request, shown, "call list")
    context = _day_context(request, shown)
    return render(request, "desk/day_calls.html", context)


def _back(request: HttpRequest) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("desk:day")


@require_POST
@login_required(login_url=LOGIN_URL)
@permission_required("patients.change_appointment", raise_exception=True)
def appointment_action(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """One click on the day view: attended, no-show, confirmed by phone or cancelled (the
    button's `action`)."""
    try:
        chosen = DeskAction(request.POST.get("action", ""))
    except ValueError:
        raise Http404("no such action") from None
    try:
        undo = appointment_mark(
            appointment_id=pk,
            action=chosen,
            actor=request.user,
            path=request.path,
            now=timezone.now(),
        )
    except Appointment.DoesNotExist:
        raise Http404(str(pk)) from None
    except ActionRefused as refused:
        messages.error(
            request,
            _("Not changed: the appointment is now %(status)s.") % {"status": refused},
        )
        return HttpResponseRedirect(_back(request))
    request.session[_UNDO_SESSION_KEY] = {
        "token": undo.sign(),
        "message": action_done_message(chosen),
        "appointment": pk,
    }
    return HttpResponseRedirect(_back(request))


@require_POST
@login_required(login_url=LOGIN_URL)
@permission_required("patients.change_appointment", raise_exception=True)
def appointment_undo_view(request: HttpRequest) -> HttpResponseRedirect:
    """Undo the last desk action on an appointment: its previous status comes back."""
    try:
        undo = Undo.load(request.POST.get("token", ""))
    except signing.BadSignature:
        messages.error(request, _("This undo has expired; change the status again instead."))
        return HttpResponseRedirect(_back(request))
    try:
        appointment_undo(undo=undo, actor=request.user, path=request.path)
    except Appointment.DoesNotExist:
        raise Http404(str(undo.appointment_id)) from None
    except ActionRefused as refused:
        messages.error(
            request,
            _("Not undone: the appointment is now %(status)s.") % {"status": refused},
        )
        return HttpResponseRedirect(_back(request))
    messages.success(request, _("Undone."))
    return HttpResponseRedirect(_back(request))


@require_POST
@login_required(login_url=LOGIN_URL)
@permission_required("patients.view_patient", raise_exception=True)
def appointment_phone(request: HttpRequest, pk: int) -> JsonResponse:
    """The patient's phone number, for the call list; each reveal is audited."""
    try:
        phone = appointment_phone_reveal(appointment_id=pk, actor=request.user, path=request.path)
    except Appointment.DoesNotExist:
        raise Http404(str(pk)) from None
    return JsonResponse({"phone": phone or _("no phone on file")})


def lands_on_desk(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Front-desk staff start their day on the day view; managers and admins in the admin."""
    if not isinstance(user, User) or user.is_superuser:
        return False
    groups = set(user.groups.values_list("name", flat=True))
    return FRONT_DESK in groups and CLINIC_MANAGER not in groups


def staff_login(request: HttpRequest) -> HttpResponseBase:
    """The admin's login page, except that the front desk lands on the day view when no other
    page was asked for."""
    response = admin.site.login(request)
    index = reverse("admin:index")
    if (
        isinstance(response, HttpResponseRedirect)
        and response.url == index
        and lands_on_desk(request.user)
    ):
        return redirect("desk:day")
    return response
