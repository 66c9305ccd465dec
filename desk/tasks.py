"""The front desk's task list and its one-click outcomes. Thin: parse, call a service, audit,
redirect or render."""

from collections.abc import Callable
from urllib.parse import urlencode

import phonenumbers
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext, pgettext_lazy
from django.views.decorators.http import require_GET, require_POST

from desk.task_services import (
    TaskClosed,
    TaskQuery,
    TaskState,
    task_assign,
    task_assignees,
    task_done,
    task_no_answer,
    task_wrong_number,
    tasks_for_list,
)
from patients.models import AuditEntry, ClinicProfile
from patients.services import audit_record
from reminders.models import StaffTask

PAGE_SIZE = 50


class TaskFilterForm(forms.Form):
    state = forms.ChoiceField(
        label=gettext_lazy("state"),
        required=False,
        choices=[
            (TaskState.OPEN, gettext_lazy("open")),
            (TaskState.DONE, gettext_lazy("done")),
            (TaskState.ALL, gettext_lazy("all")),
        ],
    )
    kind = forms.ChoiceField(
        label=gettext_lazy("task"),
        required=False,
        choices=[("", gettext_lazy("every kind")), *StaffTask.Kind.choices],
    )
    mine = forms.BooleanField(label=pgettext_lazy("staff task", "mine"), required=False)
    overdue = forms.BooleanField(label=pgettext_lazy("staff task", "overdue"), required=False)

    def query(self) -> TaskQuery:
        """The filters chosen; anything invalid falls back to the open list."""
        data = self.cleaned_data if self.is_valid() else {}
        return TaskQuery(
            state=TaskState(data.get("state") or TaskState.OPEN),
            mine=bool(data.get("mine")),
            overdue=bool(data.get("overdue")),
            kind=data.get("kind") or "",
        )


def _dialable(phone: str) -> str:
    # As a clerk dials it from the clinic: 0912 345 678, 02 2345 6789; foreign numbers with +.
    try:
        number = phonenumbers.parse(phone, settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return phone
    region = phonenumbers.region_code_for_number(number)
    kind = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if region == settings.PHONE_DEFAULT_REGION
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    return phonenumbers.format_number(number, kind)


def _encode(query: TaskQuery) -> str:
    params = {"state": query.state.value, "kind": query.kind}
    params.update({name: "1" for name in ("mine", "overdue") if getattr(query, name)})
    return urlencode({key: value for key, value in params.items() if value})


@staff_member_required
@permission_required("reminders.view_stafftask", raise_exception=True)
@require_GET
def task_list(request: HttpRequest) -> HttpResponse:
    """What staff must do: open tasks by how late they are, filtered by mine/overdue/kind."""
    form = TaskFilterForm(request.GET or None)
    query = form.query() if form.is_bound else TaskQuery()
    today = timezone.localdate()
    page = Paginator(
        tasks_for_list(query=query, user_id=request.user.pk, today=today), PAGE_SIZE
    ).get_page(request.GET.get("page"))
    tasks = list(page.object_list)
    if tasks:
        audit_record(
            actor=request.user,
            action=AuditEntry.Action.LIST,
            patients={task.patient_id for task in tasks},
            path=request.path,
            detail="staff tasks",
        )
    for task in tasks:
        # Read by the template: plain attributes, so no row asks the database anything.
        task.is_overdue = task.done_at is None and task.until < today  # type: ignore[attr-defined]
        task.not_yet = task.done_at is None and task.due_on > today  # type: ignore[attr-defined]
        task.phone_to_dial = _dialable(task.patient.phone)  # type: ignore[attr-defined]
        task.about_appointment = task.appointment or (  # type: ignore[attr-defined]
            task.message.appointment if task.message else None
        )
    return render(
        request,
        "desk/tasks.html",
        {
            "form": form if form.is_bound else TaskFilterForm(initial={"state": TaskState.OPEN}),
            "page": page,
            "tasks": tasks,
            "today": today,
            "filters": _encode(query),
            "assignees": list(task_assignees()),
            "can_change": request.user.has_perm("reminders.change_stafftask"),
        },
    )


def _back(request: HttpRequest) -> HttpResponseRedirect:
    # Back to the list as the clerk filtered it; only our own filters survive the trip.
    form = TaskFilterForm(QueryDict(request.POST.get("filters", "")))
    filters = _encode(form.query())
    return HttpResponseRedirect(
        f"{reverse('desk:tasks')}?{filters}" if filters else reverse("desk:tasks")
    )


def _audit(request: HttpRequest, task: StaffTask, what: str) -> None:
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.VIEW,
        patients=[task.patient_id],
        path=request.path,
        detail=f"staff task {task.pk}: {what}",
    )


def _task(pk: int) -> StaffTask:
    return get_object_or_404(StaffTask.objects.select_related("patient"), pk=pk)


@staff_member_required
@permission_required("reminders.change_stafftask", raise_exception=True)
@require_POST
def task_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """One outcome for one task: done, no answer (try again on the next open day), wrong number,
    or assign; each audited as an action on the patient's data."""
    handler = ACTIONS.get(action)
    if handler is None:
        raise Http404(action)
    task = _task(pk)
    try:
        said = handler(request, task)
    except TaskClosed:
        messages.warning(request, _("This task was already closed; nothing changed."))
        return _back(request)
    except ValueError as error:
        messages.error(request, str(error))
        return _back(request)
    _audit(request, task, action)
    messages.success(request, said)
    return _back(request)


def _done(request: HttpRequest, task: StaffTask) -> str:
    task_done(task_id=task.pk, note=request.POST.get("note", ""), now=timezone.now())
    return _("%(patient)s: task done.") % {"patient": task.patient.chart_no}


def _no_answer(request: HttpRequest, task: StaffTask) -> str:
    try:
        day = task_no_answer(
            task_id=task.pk,
            note=request.POST.get("note", ""),
            now=timezone.now(),
            profile=ClinicProfile.load(),
        )
    except ValueError as error:
        raise ValueError(_("The clinic has no open day in the next two months.")) from error
    return _("%(patient)s: no answer; try again on %(day)s.") % {
        "patient": task.patient.chart_no,
        "day": date_format(day, "MONTH_DAY_FORMAT"),
    }


def _wrong_number(request: HttpRequest, task: StaffTask) -> str:
    task_wrong_number(task_id=task.pk, note=request.POST.get("note", ""))
    fix = reverse("admin:patients_patient_change", args=[task.patient_id])
    return format_html(
        '{} <a href="{}">{}</a>',
        _("%(patient)s: wrong number noted.") % {"patient": task.patient.chart_no},
        fix,
        _("Fix the phone number"),
    )


def _assign(request: HttpRequest, task: StaffTask) -> str:
    assignee = _assignee(request)
    try:
        task_assign(task_id=task.pk, assignee=assignee)
    except ValueError as error:
        raise ValueError(_("That colleague can't work on tasks; nothing changed.")) from error
    who = assignee.get_username() if assignee else pgettext("staff task", "nobody")
    return _("%(patient)s: assigned to %(who)s.") % {"patient": task.patient.chart_no, "who": who}


def _assignee(request: HttpRequest) -> User | None:
    if request.POST.get("to_me"):
        return request.user  # type: ignore[return-value]  # staff_member_required: a User
    chosen = request.POST.get("assignee", "")
    if not chosen:
        return None
    if not chosen.isdigit():
        raise Http404(chosen)
    return get_object_or_404(User, pk=int(chosen))


ACTIONS: dict[str, Callable[[HttpRequest, StaffTask], str]] = {
    "done": _done,
    "no-answer": _no_answer,
    "wrong-number": _wrong_number,
    "assign": _assign,
}
