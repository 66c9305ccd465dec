"""Group messages (/desk/groups/): staff choose a group and write one text; the confirm step
shows how many get it on which channel and why the others don't, and a second click sends it
(reminders.groups). The front desk may send to a doctor's patients of one day ("the doctor is
30 minutes late"); a segment (age, sex, condition, department, last visit) is the clinic
manager's. The pages show counts only, never a patient: nothing here reads patient data, so
only the send itself is audited (by reminders.groups.group_send)."""

from datetime import date
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from consent.models import Channel, Purpose
from desk.views import LOGIN_URL
from patients.models import ClinicProfile, Condition, Patient, Visit
from reminders.groups import (
    EXCLUSIONS,
    GROUP_CHANNELS,
    GroupChanged,
    GroupDefinition,
    GroupRefused,
    Preview,
    doctors_on,
    group_preview,
    group_send,
    may_send,
    tomorrow,
)
from reminders.inbox import MAX_REPLY_CHARS
from reminders.models import GroupSend

ANY = "reminders.send_group_message"
DAY = "reminders.send_day_group_message"


def _body_field() -> forms.CharField:
    return forms.CharField(
        label=gettext_lazy("Message"),
        max_length=MAX_REPLY_CHARS,
        widget=forms.Textarea(attrs={"rows": 4}),
    )


class DayGroupForm(forms.Form):
    day = forms.DateField(
        label=gettext_lazy("Day"), widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    doctor = forms.CharField(
        label=gettext_lazy("Doctor"),
        max_length=60,
        widget=forms.TextInput(attrs={"list": "doctors", "autocomplete": "off"}),
    )
    department = forms.CharField(
        label=gettext_lazy("Department (optional)"), max_length=40, required=False
    )
    body = _body_field()
    urgent = forms.BooleanField(
        label=gettext_lazy("Urgent: send at once, even outside the send window"), required=False
    )

    def definition(self) -> GroupDefinition:
        data = self.cleaned_data
        return GroupDefinition(
            kind=GroupSend.Kind.DAY,
            day=data["day"],
            doctor=data["doctor"].strip(),
            department=data["department"].strip(),
        )


class SegmentForm(forms.Form):
    min_age = forms.IntegerField(
        label=gettext_lazy("Age from"), min_value=0, max_value=130, required=False
    )
    max_age = forms.IntegerField(
        label=gettext_lazy("Age to"), min_value=0, max_value=130, required=False
    )
    sex = forms.ChoiceField(
        label=gettext_lazy("Sex"),
        choices=[("", gettext_lazy("any"))] + list(Patient.Sex.choices),
        required=False,
    )
    condition = forms.ChoiceField(label=gettext_lazy("Chronic condition"), required=False)
    department = forms.CharField(
        label=gettext_lazy("Visited the department"),
        max_length=40,
        required=False,
        widget=forms.TextInput(attrs={"list": "departments", "autocomplete": "off"}),
    )
    visited_after = forms.DateField(
        label=gettext_lazy("Last visit on or after"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    visited_before = forms.DateField(
        label=gettext_lazy("Last visit before"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    purpose = forms.ChoiceField(
        label=gettext_lazy("What the message is for (the patient's consent for it decides)"),
        choices=[
            (Purpose.CARE, Purpose.CARE.label),
            (Purpose.RELATIONSHIP, Purpose.RELATIONSHIP.label),
        ],
        widget=forms.RadioSelect,
        initial=Purpose.CARE,
    )
    body = _body_field()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["condition"].choices = [("", _("any"))] + [  # type: ignore[attr-defined]
            (c.code, c.label_zh) for c in Condition.objects.order_by("code")
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        low, high = data.get("min_age"), data.get("max_age")
        if low is not None and high is not None and low > high:
            raise forms.ValidationError(_("The lower age is above the upper one."))
        return data

    def definition(self) -> GroupDefinition:
        data = self.cleaned_data
        return GroupDefinition(
            kind=GroupSend.Kind.SEGMENT,
            min_age=data["min_age"],
            max_age=data["max_age"],
            sex=data["sex"],
            condition=data["condition"],
            department=data["department"].strip(),
            visited_after=data["visited_after"],
            visited_before=data["visited_before"],
        )


def _may_use(request: HttpRequest) -> None:
    if not (request.user.has_perm(ANY) or request.user.has_perm(DAY)):
        raise PermissionDenied


def _page(
    request: HttpRequest,
    *,
    day_form: DayGroupForm | None = None,
    segment_form: SegmentForm | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    now = timezone.now()
    today = timezone.localdate(now)
    may_segment = request.user.has_perm(ANY)
    context = {
        "day_form": day_form or DayGroupForm(initial={"day": tomorrow(now)}),
        "segment_form": (segment_form or SegmentForm()) if may_segment else None,
        "doctors": sorted(set(doctors_on(today)) | set(doctors_on(tomorrow(now)))),
        "departments": _departments(),
        "error": error,
        "recent": GroupSend.objects.select_related("created_by")[:10],
        "today": today,
    }
    return render(request, "desk/groups.html", context, status=status)


def _departments() -> list[str]:
    return list(
        Visit.objects.order_by("department").values_list("department", flat=True).distinct()[:50]
    )


@require_GET
@login_required(login_url=LOGIN_URL)
def groups(request: HttpRequest) -> HttpResponse:
    """The two kinds of group, each with its text box, and the last group messages sent."""
    _may_use(request)
    return _page(request)


@require_POST
@login_required(login_url=LOGIN_URL)
def preview(request: HttpRequest) -> HttpResponse:
    """The confirm step: the counts, the exact text and when it goes; nothing is queued."""
    _may_use(request)
    kind = request.POST.get("kind")
    form: DayGroupForm | SegmentForm
    page: dict[str, Any]
    if kind == GroupSend.Kind.SEGMENT:
        form = SegmentForm(request.POST)
        page = {"segment_form": form}
    else:
        kind = GroupSend.Kind.DAY
        form = DayGroupForm(request.POST)
        page = {"day_form": form}
    if not may_send(request.user, kind):
        raise PermissionDenied
    if not form.is_valid():
        return _page(request, **page, status=400)
    now = timezone.now()
    try:
        shown = group_preview(
            definition=form.definition(),
            purpose=form.cleaned_data.get("purpose", Purpose.CARE),
            body=form.cleaned_data["body"],
            urgent=bool(form.cleaned_data.get("urgent")),
            now=now,
            profile=ClinicProfile.load(),
        )
    except GroupRefused as refused:
        return _page(request, **page, error=str(refused), status=400)
    return _confirm(request, shown, changed=False)


def _confirm(request: HttpRequest, shown: Preview, *, changed: bool) -> HttpResponse:
    counts = shown.counts
    channels = [
        (Channel(c).label, counts.channels[c]) for c in GROUP_CHANNELS if counts.channels.get(c)
    ]
    excluded = [(r.label, counts.excluded[r]) for r in EXCLUSIONS if counts.excluded.get(r)]
    context = {
        "shown": shown,
        "channels": channels,
        "excluded": excluded,
        "describe": describe(shown.definition),
        "purpose": Purpose(shown.purpose).label,
        "changed": changed,
        "now": timezone.now(),
    }
    return render(request, "desk/group_confirm.html", context, status=409 if changed else 200)


@require_POST
@login_required(login_url=LOGIN_URL)
def send(request: HttpRequest) -> HttpResponse:
    """The second click: queue what the signed token confirms, or show the group again."""
    _may_use(request)
    try:
        sent, _queued = group_send(
            token=request.POST.get("token", ""),
            by=request.user,  # type: ignore[arg-type]
            now=timezone.now(),
            profile=ClinicProfile.load(),
            path=request.path,
        )
    except GroupChanged as changed:
        return _confirm(request, changed.preview, changed=True)
    except GroupRefused as refused:
        return _page(request, error=str(refused), status=400)
    return HttpResponseRedirect(reverse("desk:group_sent", args=[sent.pk]))


@require_GET
@login_required(login_url=LOGIN_URL)
def sent(request: HttpRequest, pk: int) -> HttpResponse:
    """One group message: its group, text, counts, who sent it and when."""
    _may_use(request)
    group = get_object_or_404(GroupSend.objects.select_related("created_by"), pk=pk)
    counts = group.counts
    channels = [(Channel(c).label, counts[c]) for c in GROUP_CHANNELS if counts.get(c)]
    excluded = [(r.label, counts[r]) for r in EXCLUSIONS if counts.get(r)]
    definition = GroupDefinition.from_dict(group.definition | {"kind": group.kind})
    context = {
        "group": group,
        "channels": channels,
        "excluded": excluded,
        "describe": describe(definition),
        "purpose": Purpose(group.purpose).label,
    }
    return render(request, "desk/group_sent.html", context)


def describe(definition: GroupDefinition) -> list[tuple[str, str]]:
    """The group's filters in words, for the confirm step and the record."""
    d = definition

    def day(value: date | None) -> str:
        return value.isoformat() if value else ""

    if d.kind == GroupSend.Kind.DAY:
        rows = [(_("Day"), day(d.day)), (_("Doctor"), d.doctor)]
        if d.department:
            rows.append((_("Department"), d.department))
        rows.append((_("Appointments"), _("all but cancelled ones")))
        return rows
    rows = []
    if d.min_age is not None or d.max_age is not None:
        low = "" if d.min_age is None else str(d.min_age)
        high = "" if d.max_age is None else str(d.max_age)
        rows.append((_("Age"), f"{low}–{high}"))
    if d.sex:
        rows.append((_("Sex"), str(Patient.Sex(d.sex).label)))
    if d.condition:
        label = Condition.objects.filter(code=d.condition).values_list("label_zh", flat=True)
        rows.append((_("Chronic condition"), label.first() or d.condition))
    if d.department:
        rows.append((_("Visited the department"), d.department))
    if d.visited_after:
        rows.append((_("Last visit on or after"), day(d.visited_after)))
    if d.visited_before:
        rows.append((_("Last visit before"), day(d.visited_before)))
    return rows or [(_("Patients"), _("all"))]
