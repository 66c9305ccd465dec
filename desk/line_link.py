"""The LINE link page: a one-time code for a patient, its QR code and link, printed on a slip or
sent by SMS (reminders.linking). Every showing is audited as a view of the patient."""

from django import forms
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from consent.models import Purpose
from desk.views import LOGIN_URL
from patients.models import AuditEntry, ClinicProfile, Patient
from patients.services import audit_record
from reminders.linking import (
    SmsRefused,
    line_link_code_check,
    line_link_code_create,
    line_link_sms_queue,
    line_status,
    link_slip,
)

# Staff who may make a code: it records consent when the patient uses it.
MAKE_PERMISSIONS = ("patients.change_patient", "consent.add_consententry")


class CodeForm(forms.Form):
    purposes = forms.MultipleChoiceField(
        label=gettext_lazy("The patient agrees to get on LINE"),
        choices=Purpose.choices,
        initial=[Purpose.CARE],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": gettext_lazy("Choose what the patient agrees to get.")},
    )


class SmsForm(forms.Form):
    code = forms.RegexField(regex=r"^[A-Z0-9]{6}$", max_length=6)


@require_http_methods(["GET", "POST"])
@login_required(login_url=LOGIN_URL)
@permission_required("patients.view_patient", raise_exception=True)
def line_link(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the patient's LINE status and the form to make a code. POST make: a new code and
    its slip (shown this once: only its hash is kept). POST sms: the slip's link by SMS."""
    patient = get_object_or_404(Patient, pk=pk, erased_at__isnull=True)
    profile = ClinicProfile.load()
    may_make = all(request.user.has_perm(perm) for perm in MAKE_PERMISSIONS)
    now = timezone.now()
    form = CodeForm()
    slip, notice, problem = None, "", ""
    if request.method == "POST":
        if not may_make:
            raise PermissionDenied
        if request.POST.get("action") == "sms":
            sent = SmsForm(request.POST)
            code = sent.cleaned_data["code"] if sent.is_valid() else ""
            row = line_link_code_check(patient=patient, code=code, now=now) if code else None
            if row is None:
                problem = _("This code no longer works (used, replaced or expired): make another.")
            else:
                slip = link_slip(code=code, row=row, profile=profile)
                try:
                    line_link_sms_queue(row=row, code=code, profile=profile, now=now)
                except SmsRefused as refused:
                    problem = str(refused)
                else:
                    notice = _("The link is queued to go by SMS to the patient's phone.")
        elif profile.line_basic_id:
            form = CodeForm(request.POST)
            if form.is_valid():
                user = request.user if request.user.is_authenticated else None
                row, code = line_link_code_create(
                    patient=patient,
                    purposes=form.cleaned_data["purposes"],
                    created_by=user,  # type: ignore[arg-type]
                    now=now,
                )
                slip = link_slip(code=code, row=row, profile=profile)
                form = CodeForm()
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.VIEW,
        patients=[patient],
        path=request.path,
        detail=str(_("LINE link code")),
    )
    context = {
        "patient": patient,
        "profile": profile,
        "status": line_status(patient=patient),
        "slip": slip,
        "form": form,
        "may_make": may_make,
        "notice": notice,
        "problem": problem,
    }
    return render(request, "desk/line_link.html", context)
