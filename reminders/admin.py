from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten, flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.models import User
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django_stubs_ext import StrOrPromise

from campaigns.models import Skip
from campaigns.preview import last_sent_annotation, message_waiting_for, occurrence_label
from clinic_crm.exports import ExportAdminMixin
from consent.models import Channel
from patients.admin import PatientAdmin
from patients.admin_audit import AuditedAdminMixin, LatestFormSet, ReadOnlyAdminMixin
from patients.models import ClinicProfile, Patient
from reminders.models import Attempt, OutboxMessage, Snippet, StaffTask, Status
from reminders.services import messages_settle_unknown, tasks_mark_done

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices

_ChildT = TypeVar("_ChildT", bound=Model)
_ParentT = TypeVar("_ParentT", bound=Model)


class StaffRequest(HttpRequest):
    """For annotations only: the request an admin action gets, whose user admin_view has already
    checked is logged-in staff (never AnonymousUser)."""

    user: User


def waiting_for(message: OutboxMessage) -> str:
    """What a queued message waits for, in words (campaigns.preview.message_waiting_for); the
    queryset annotates `last_sent_at` with last_sent_annotation."""
    if message.status != Status.QUEUED:
        return ""  # without reading the clinic profile, for most rows of a list
    return message_waiting_for(
        message=message,
        now=timezone.now(),
        profile=ClinicProfile.load(),
        last_sent_at=getattr(message, "last_sent_at", None),
    )


def _patient_link(patient: Patient) -> str:
    url = reverse("admin:patients_patient_change", args=[patient.pk])
    return format_html('<a href="{}">{} {}</a>', url, patient.chart_no, patient.name)


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline[_ChildT, _ParentT]):
    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: _ParentT | None = None) -> list[str]:
        return flatten(self.fields or ())


class AttemptInline(ReadOnlyInline[Attempt, OutboxMessage]):
    model = Attempt
    fields = ["channel", "started_at", "finished_at", "outcome", "error"]


@admin.register(OutboxMessage)
class OutboxMessageAdmin(
    ExportAdminMixin, ReadOnlyAdminMixin, AuditedAdminMixin, admin.ModelAdmin[OutboxMessage]
):
    """Read-only: the planner writes messages and dispatch moves them on. Staff only settle the
    ones whose outcome is unknown, after checking with the provider."""

    list_display = [
        "due_at",
        "patient_name",
        "rule",
        "channel",
        "status",
        "waiting_for",
        "attempts",
        "sent_at",
    ]
    list_filter = ["status", "channel", "rule", "due_at"]
    list_select_related = ["patient", "rule"]
    search_fields = ["patient__chart_no"]
    search_help_text = _("Chart number.")
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "patient_link",
                    "rule",
                    "purpose",
                    "occurrence",
                    "channel",
                    "status",
                    "waiting_for",
                ]
            },
        ),
        (_("Text"), {"fields": ["subject", "text"]}),
        (
            _("Delivery"),
            {
                "fields": [
                    "due_at",
                    "next_attempt_at",
                    "expires_at",
                    "attempts",
                    "sent_at",
                    "delivered_at",
                    "provider_id",
                    "error",
                    "channels_still_to_try",
                    "created_at",
                ]
            },
        ),
    ]
    inlines = [AttemptInline]
    actions = ["mark_sent", "mark_failed"]

    def audited_patient_ids(self, objects: Iterable[OutboxMessage]) -> list[int]:
        return [obj.patient_id for obj in objects]

    def get_readonly_fields(
        self, request: HttpRequest, obj: OutboxMessage | None = None
    ) -> list[str]:
        return flatten_fieldsets(self.fieldsets or ())

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        messages: QuerySet[OutboxMessage] = super().get_queryset(request)
        return messages.annotate(last_sent_at=last_sent_annotation())

    @admin.display(description=_("waiting for"))
    def waiting_for(self, obj: OutboxMessage) -> str:
        return waiting_for(obj)

    @admin.display(description=_("text"))
    def text(self, obj: OutboxMessage) -> str:
        return obj.text_for_staff()

    @admin.display(description=_("occurrence"))
    def occurrence(self, obj: OutboxMessage) -> str:
        return occurrence_label(obj.occurrence_key)

    @admin.display(description=_("channels left"))
    def channels_still_to_try(self, obj: OutboxMessage) -> str:
        return " → ".join(str(Channel(channel).label) for channel in obj.channels_left)

    @admin.display(description=_("patient"), ordering="patient__chart_no")
    def patient_name(self, obj: OutboxMessage) -> str:
        return f"{obj.patient.chart_no} {obj.patient.name}"

    @admin.display(description=_("patient"))
    def patient_link(self, obj: OutboxMessage) -> str:
        return _patient_link(obj.patient)

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        # The change page stays read-only for everyone; settling an unknown outcome is the one
        # change staff make, so it is what the change permission grants.
        return request.user.has_perm("reminders.change_outboxmessage")

    @admin.action(
        permissions=["resolve"],
        description=_("Mark as sent (confirmed with the provider)"),
    )
    def mark_sent(self, request: StaffRequest, queryset: QuerySet[OutboxMessage]) -> None:
        self._settle(request, queryset, sent=True)

    @admin.action(
        permissions=["resolve"],
        description=_("Mark as failed (confirmed with the provider)"),
    )
    def mark_failed(self, request: StaffRequest, queryset: QuerySet[OutboxMessage]) -> None:
        self._settle(request, queryset, sent=False)

    def _settle(
        self, request: StaffRequest, queryset: QuerySet[OutboxMessage], *, sent: bool
    ) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        settled = messages_settle_unknown(
            message_ids=ids, sent=sent, actor=request.user, now=timezone.now()
        )
        done = (
            _("%(count)d message(s) marked as sent.")
            if sent
            else _("%(count)d message(s) marked as failed.")
        )
        self.message_user(request, done % {"count": settled})
        if settled < len(ids):
            self.message_user(
                request,
                _("%(count)d message(s) left as they were: only unknown outcomes can be settled.")
                % {"count": len(ids) - settled},
                messages.WARNING,
            )


class TaskStateFilter(admin.SimpleListFilter):
    """Open tasks unless asked otherwise: the list is the front desk's to-do list."""

    title = _("state")
    parameter_name = "state"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[StaffTask]
    ) -> list[tuple[str, StrOrPromise]]:
        return [("open", _("open")), ("done", _("done")), ("all", _("all"))]

    def choices(self, changelist: ChangeList) -> Iterator["_ListFilterChoices"]:
        current = self.value() or "open"
        for value, title in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[StaffTask]) -> QuerySet[StaffTask]:
        state = self.value() or "open"
        if state == "all":
            return queryset
        return queryset.filter(done_at__isnull=state == "open")


class StaffTaskForm(forms.ModelForm[StaffTask]):
    class Meta:
        model = StaffTask
        fields = ["note"]


@admin.register(StaffTask)
class StaffTaskAdmin(ExportAdminMixin, AuditedAdminMixin, admin.ModelAdmin[StaffTask]):
    form = StaffTaskForm
    list_display = [
        "kind",
        "patient_name",
        "patient_phone",
        "due_on",
        "until",
        "done_at",
        "assignee",
        "outcome",
        "about",
    ]
    list_filter = [TaskStateFilter, "kind"]
    list_select_related = ["patient", "message", "assignee"]
    fields = [
        "kind",
        "patient_link",
        "about",
        "due_on",
        "until",
        "done_at",
        "assignee",
        "tries",
        "outcome",
        "note",
    ]
    # The outcomes and assignment are the desk's task list's job (desk/tasks.py), audited there.
    readonly_fields = [
        "kind",
        "patient_link",
        "about",
        "due_on",
        "until",
        "done_at",
        "assignee",
        "tries",
        "outcome",
    ]
    actions = ["mark_done"]

    def audited_patient_ids(self, objects: Iterable[StaffTask]) -> list[int]:
        return [obj.patient_id for obj in objects]

    @admin.display(description=_("patient"), ordering="patient__chart_no")
    def patient_name(self, obj: StaffTask) -> str:
        return f"{obj.patient.chart_no} {obj.patient.name}"

    @admin.display(description=_("phone"))
    def patient_phone(self, obj: StaffTask) -> str:
        return obj.patient.phone

    @admin.display(description=_("patient"))
    def patient_link(self, obj: StaffTask) -> str:
        return _patient_link(obj.patient)

    @admin.display(description=_("about"))
    def about(self, obj: StaffTask) -> str:
        if obj.message_id:
            url = reverse("admin:reminders_outboxmessage_change", args=[obj.message_id])
            return format_html('<a href="{}">{}</a>', url, _("the message"))
        if obj.procedure_id:
            url = reverse("admin:patients_procedure_change", args=[obj.procedure_id])
            return format_html('<a href="{}">{}</a>', url, _("the procedure"))
        if obj.appointment_id:
            url = reverse("admin:patients_appointment_change", args=[obj.appointment_id])
            return format_html('<a href="{}">{}</a>', url, _("the appointment"))
        return ""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: StaffTask | None = None) -> bool:
        return False

    @admin.action(permissions=["change"], description=_("Mark done"))
    def mark_done(self, request: HttpRequest, queryset: QuerySet[StaffTask]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        closed = tasks_mark_done(task_ids=ids, now=timezone.now())
        self.message_user(request, _("%(count)d task(s) marked done.") % {"count": closed})


# --- On the patient page: "why didn't Mrs Lin get her reminder?" -------------------------------


class PatientLatestInline(ReadOnlyInline[_ChildT, Patient]):
    formset: type[LatestFormSet[_ChildT]] = LatestFormSet
    show_change_link = True
    # The stock table, then a link to all of the patient's rows in the list page.
    template = "admin/latest_tabular.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[_ChildT]:
        return super().get_queryset(request).select_related("rule")  # one query, not one a row


class MessageInline(PatientLatestInline[OutboxMessage]):
    model = OutboxMessage
    fields = ["due_at", "rule", "channel", "status", "waiting", "error"]
    ordering = ["-due_at", "-pk"]
    verbose_name_plural = _("messages (newest first)")

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        return super().get_queryset(request).annotate(last_sent_at=last_sent_annotation())

    @admin.display(description=_("waiting for"))
    def waiting(self, obj: OutboxMessage) -> str:
        return waiting_for(obj)


class SkipInline(PatientLatestInline[Skip]):
    model = Skip
    fields = ["at", "rule", "occurrence", "reason"]
    ordering = ["-at", "-pk"]
    verbose_name_plural = _("messages not sent, and why (newest first)")

    @admin.display(description=_("occurrence"))
    def occurrence(self, obj: Skip) -> str:
        return occurrence_label(obj.occurrence_key)


# patients/ imports nothing from campaigns/ or reminders/ (data flows from records to rules to
# the outbox), so the outbox and the skips join the patient page from this side.
PatientAdmin.inlines = [*PatientAdmin.inlines, MessageInline, SkipInline]


@admin.register(Snippet)
class SnippetAdmin(admin.ModelAdmin[Snippet]):
    """Saved answers staff insert into a message to a patient (the desk's conversation page)."""

    list_display = ["title", "position", "active"]
    list_editable = ["position", "active"]
    search_fields = ["title"]
