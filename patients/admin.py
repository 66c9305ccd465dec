from collections.abc import Callable
from typing import ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.translation import gettext_lazy as _

from clinic_crm.exports import ExportAdminMixin
from clinic_crm.normalise import identifier_key
from consent.admin import ConsentEntryInline, ConsentStateInline
from patients.admin_audit import (
    AuditedAdminMixin,
    LatestFormSet,
    ReadOnlyAdminMixin,
    audit_autocomplete,
)
from patients.closures import clinic_days_parse_csv, clinic_days_parse_lines, clinic_days_save
from patients.models import (
    DOSE_TIME,
    Appointment,
    AuditEntry,
    AuditLink,
    ClinicDay,
    ClinicProfile,
    Condition,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
)
from patients.selectors import patient_search
from patients.services import patient_erase, patient_export, prescription_sync_refills

admin.site.site_header = _("Clinic patient care")
admin.site.site_title = _("Clinic patient care")
admin.site.index_title = _("Front desk")
# The patient box on every record's form looks patients up through PatientAdmin's search.
audit_autocomplete(admin.site)

WEEKDAYS = [
    (0, _("Monday")),
    (1, _("Tuesday")),
    (2, _("Wednesday")),
    (3, _("Thursday")),
    (4, _("Friday")),
    (5, _("Saturday")),
    (6, _("Sunday")),
]


class ClinicProfileForm(forms.ModelForm):
    closed_weekdays = forms.TypedMultipleChoiceField(
        label=_("closed weekdays"),
        choices=WEEKDAYS,
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = ClinicProfile
        fields = [
            "name",
            "phone",
            "address",
            "line_account_name",
            "line_basic_id",
            "send_window_start",
            "send_window_end",
            "closed_weekdays",
        ]


@admin.register(ClinicProfile)
class ClinicProfileAdmin(admin.ModelAdmin):
    form = ClinicProfileForm
    list_display = ["name", "phone", "send_window_start", "send_window_end"]

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not ClinicProfile.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Condition)
class ConditionAdmin(admin.ModelAdmin):
    list_display = ["code", "label_zh", "label_en"]
    search_fields = ["code", "label_zh", "label_en"]


class DoseTimesField(forms.CharField):
    """Dose times typed as "08:00, 20:00"; stored as a list."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        times = [t.strip() for t in (value or "").replace("，", ",").split(",") if t.strip()]
        bad = [t for t in times if not DOSE_TIME.match(t)]
        if bad:
            raise ValidationError(
                _("Use 24-hour times separated by commas, e.g. 08:00, 20:00 (not %(bad)s)."),
                params={"bad": ", ".join(bad)},
            )
        return times


class PrescriptionForm(forms.ModelForm):
    dose_times = DoseTimesField(
        label=_("dose times"),
        required=False,
        help_text=_("e.g. 08:00, 20:00; left empty, the usual times for the frequency."),
    )

    class Meta:
        model = Prescription
        fields = [
            "patient",
            "visit",
            "drug",
            "dose",
            "frequency",
            "dose_times",
            "start_date",
            "days_supplied",
            "refills",
            "dose_reminders",
            "refill_reminders",
        ]

    def clean(self):
        data = super().clean()
        visit, patient = data.get("visit"), data.get("patient") or self.instance.patient_id
        patient_id = getattr(patient, "pk", patient)
        if visit is not None and patient_id is not None and visit.patient_id != patient_id:
            self.add_error("visit", _("Choose one of this patient's visits."))
        return data


class PatientChildInline(admin.TabularInline):
    extra = 0
    show_change_link = True
    formset = LatestFormSet  # the newest rows, and a link to all of them
    template = "admin/latest_tabular.html"


class VisitInline(PatientChildInline):
    model = Visit
    fields = ["visited_on", "department", "doctor", "diagnosis_codes", "note"]


class PatientVisitsMixin:
    """The prescription form's visit box lists the one patient's visits, never everyone's."""

    @staticmethod
    def limit_visits(form_class, patient):
        field = form_class.base_fields.get("visit")
        if field is not None:
            visits = Visit.objects.filter(patient=patient) if patient else Visit.objects.none()
            field.queryset = visits.order_by("-visited_on", "-pk")


class PrescriptionInline(PatientVisitsMixin, PatientChildInline):
    model = Prescription
    form = PrescriptionForm
    fields = [
        "visit",
        "drug",
        "dose",
        "frequency",
        "dose_times",
        "start_date",
        "days_supplied",
        "refills",
        "dose_reminders",
        "refill_reminders",
    ]

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        self.limit_visits(formset.form, obj)  # a class made for this request alone
        return formset


class PagePanel:
    """A block on the patient page: a template and what it shows."""

    def __init__(self, template: str, **context):
        self.template, self.context = template, context


class PatientPage:
    """What other apps add to the patient page. patients/ imports nothing from campaigns/ or
    reminders/ (data flows from records to rules to the outbox), so they register here."""

    # Each takes the request and the patient and returns a PagePanel, or None to show nothing.
    panels: ClassVar[list[Callable[[HttpRequest, Patient], PagePanel | None]]] = []
    # Each returns care plans the rules name, as (key, label): the procedure form's choices.
    care_plan_sources: ClassVar[list[Callable[[], list[tuple[str, str]]]]] = []


class CarePlanField(forms.ChoiceField):
    """A procedure's care plan, chosen from those the care rules use (a key no rule uses any
    more stays selectable on the records that have it: ProcedureForm)."""

    def __init__(self, **kwargs):
        super().__init__(choices=self.plans, **kwargs)

    @staticmethod
    def plans():
        plans = [plan for source in PatientPage.care_plan_sources for plan in source()]
        return [("", _("none: only the post-op rules for every procedure")), *plans]


class ProcedureForm(forms.ModelForm):
    # Declared here: the admin would give a model field's own form field a text box.
    care_plan_key = CarePlanField(
        label=Procedure._meta.get_field("care_plan_key").verbose_name,
        required=False,
        help_text=_("The post-op care rules for this kind of procedure."),
    )

    class Meta:
        model = Procedure
        fields = ["patient", "procedure_type", "performed_at", "discharged_at", "care_plan_key"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields.get("care_plan_key")
        current = self.instance.care_plan_key if self.instance.pk else ""
        if field is not None and current and current not in dict(field.choices):
            field.choices = [*field.choices, (current, current)]


class ProcedureInline(PatientChildInline):
    model = Procedure
    form = ProcedureForm
    fields = ["procedure_type", "performed_at", "discharged_at", "care_plan_key"]


class AppointmentInline(PatientChildInline):
    model = Appointment
    ordering = ["-starts_at"]  # the coming ones first, then the most recent
    fields = ["starts_at", "department", "doctor", "location", "bring_notes", "status"]


class ErasedFilter(admin.SimpleListFilter):
    title = _("erased")
    parameter_name = "erased"

    def lookups(self, request, model_admin):
        return [("no", _("active")), ("yes", _("erased"))]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(erased_at__isnull=self.value() == "no")
        return queryset


@admin.register(Patient)
class PatientAdmin(ExportAdminMixin, AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["chart_no", "name", "sex", "birth_date", "phone", "preferred_channel"]
    list_filter = [ErasedFilter, "sex", "preferred_language", "preferred_channel", "conditions"]
    list_per_page = 50
    search_fields = ["chart_no"]  # the real search is get_search_results, through blind indexes
    search_help_text = _(
        "Chart number (or its start), the exact full name, phone number, e-mail or national ID, "
        "or the phone's last four digits with the birth date (5678 1960-03-15 or 5678 49/03/15)."
    )
    filter_horizontal = ["conditions"]
    # The LINE user id is never typed: the patient links it by sending a code (the LINE link
    # page). The form shows only whether one is linked; saving it leaves the id as it is.
    readonly_fields = ["line_account", "erased_at", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["chart_no", "name", "sex", "birth_date", "national_id"]}),
        (
            _("Contact"),
            {
                "fields": [
                    "phone",
                    "email",
                    "line_account",
                    "preferred_channel",
                    "preferred_language",
                    "caregiver_contact",
                ]
            },
        ),
        (_("Care"), {"fields": ["conditions", "notes"]}),
        (_("Record"), {"fields": ["erased_at", "created_at", "updated_at"]}),
    ]
    inlines = [
        ConsentStateInline,
        ConsentEntryInline,
        AppointmentInline,
        VisitInline,
        PrescriptionInline,
        ProcedureInline,
    ]
    actions = ["export_json", "erase"]

    class Media:
        # Fits 1,366 px and a 1,024 px tablet: wide inlines wrap instead of scrolling sideways.
        css = {"all": ["patients/patient_page.css"]}

    def audited_patient_ids(self, objects):
        return [obj.pk for obj in objects]

    @admin.display(description="LINE")
    def line_account(self, obj):
        if obj is not None and obj.line_user_id_bidx:
            return _("linked")
        return _("not linked (the patient sends a link code: see LINE below)")

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            # Shown on this page, so covered by the page's own audit entry.
            panels = (panel(request, obj) for panel in PatientPage.panels)
            context["patient_panels"] = [panel for panel in panels if panel is not None]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_search_results(self, request, queryset, search_term):
        return patient_search(search_term, queryset), False

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        if formset.model is Prescription:
            for prescription in formset.new_objects + [o for o, _f in formset.changed_objects]:
                prescription_sync_refills(prescription=prescription)

    @admin.action(description=_("Export everything held about the patient (JSON)"))
    def export_json(self, request, queryset):
        if not request.user.has_perm("patients.export_patient"):
            raise PermissionDenied
        if queryset.count() != 1:
            self.message_user(request, _("Export one patient at a time."), messages.WARNING)
            return None
        patient = queryset.get()
        document = patient_export(patient=patient, actor=request.user, path=request.path)
        response = HttpResponse(document, content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="patient-{patient.chart_no}.json"'
        return response

    def has_delete_permission(self, request, obj=None):
        # A patient is erased, never deleted: the record stays (medical records are kept for
        # years) and the app's database role may not DELETE it (patients/0016).
        return False

    @admin.action(description=_("Erase contact data and stop all messages"))
    def erase(self, request, queryset):
        if not request.user.has_perm("patients.erase_patient"):
            raise PermissionDenied
        erased = 0
        for patient in queryset.filter(erased_at__isnull=True):
            patient_erase(patient=patient, actor=request.user, path=request.path)
            erased += 1
        self.message_user(request, _("%(count)d patient(s) erased.") % {"count": erased})

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not request.user.has_perm("patients.erase_patient"):
            actions.pop("erase", None)
        if not request.user.has_perm("patients.export_patient"):
            actions.pop("export_json", None)
        return actions


class PatientRecordAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Lists of one kind of record across patients; each row shows whose it is."""

    autocomplete_fields = ["patient"]
    list_select_related = ["patient"]

    def audited_patient_ids(self, objects):
        return [obj.patient_id for obj in objects]

    @admin.display(description=_("patient"))
    def patient_name(self, obj):
        return f"{obj.patient.chart_no} {obj.patient.name}"


@admin.register(Visit)
class VisitAdmin(PatientRecordAdmin):
    list_display = ["visited_on", "patient_name", "department", "doctor", "diagnosis_codes"]
    list_filter = ["department", "visited_on"]
    date_hierarchy = "visited_on"


class RefillWindowInline(admin.TabularInline):
    model = RefillWindow
    extra = 0
    fields = ["number", "opens_on", "closes_on", "picked_up_on"]
    readonly_fields = ["number", "opens_on", "closes_on"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Prescription)
class PrescriptionAdmin(PatientVisitsMixin, PatientRecordAdmin):
    form = PrescriptionForm
    list_display = ["start_date", "patient_name", "drug", "frequency", "days_supplied", "refills"]
    list_filter = ["frequency", "dose_reminders", "start_date"]
    inlines = [RefillWindowInline]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        # A new prescription has no patient yet: its visit is chosen once it is saved (or it
        # is added from the patient's page, where the visits are that patient's).
        self.limit_visits(form, obj.patient if obj else None)
        return form

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        prescription_sync_refills(prescription=form.instance)


@admin.register(Procedure)
class ProcedureAdmin(PatientRecordAdmin):
    form = ProcedureForm
    list_display = ["performed_at", "patient_name", "procedure_type", "discharged_at"]
    list_filter = ["care_plan_key", "performed_at"]


@admin.register(Appointment)
class AppointmentAdmin(ExportAdminMixin, PatientRecordAdmin):
    list_display = ["starts_at", "patient_name", "department", "doctor", "status"]
    list_filter = ["status", "department", "starts_at"]
    list_editable = ["status"]
    date_hierarchy = "starts_at"


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, AuditedAdminMixin, admin.ModelAdmin):
    """The manager's audit log. Reading a patient's trail is itself audited: an entry's page
    names its patients, and a search by chart number is a lookup of that patient."""

    list_display = ["at", "actor_name", "action", "patient_count", "path"]
    list_filter = ["action", "at"]
    # Exact chart numbers: a partial one would pull up many patients' trails at once.
    search_fields = ["actor_name", "=patients__chart_no"]
    search_help_text = _("Staff member, or a patient's full chart number.")
    fields = ["at", "actor_name", "action", "patient_list", "path", "detail"]
    readonly_fields = ["patient_list"]
    date_hierarchy = "at"
    audit_plain_lists = False  # the list shows a count per entry, no patient

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(patient_total=Count("patients"))

    def audited_patient_ids(self, objects):
        links = AuditLink.objects.filter(entry__in=[entry.pk for entry in objects])
        return sorted(set(links.values_list("patient_id", flat=True)))

    def audited_search_ids(self, request, term, objects):
        return list(
            Patient.objects.filter(chart_no=identifier_key(term)).values_list("pk", flat=True)
        )

    @admin.display(description=_("patients"), ordering="patient_total")
    def patient_count(self, obj):
        return obj.patient_total

    @admin.display(description=_("patients"))
    def patient_list(self, obj):
        links = obj.links.select_related("patient").order_by("patient__chart_no")
        return ", ".join(link.patient.chart_no for link in links)


class ClinicDayImportForm(forms.Form):
    lines = forms.CharField(
        label=_("dates, one per line"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 12, "cols": 60}),
        help_text=_(
            "For example 2027-01-01 元旦 or 116/01/01 元旦 (ROC). A note with 補班 makes a "
            "make-up workday, 颱風 a typhoon day, 請假 or 休診 a doctor's leave."
        ),
    )
    csv_file = forms.FileField(
        label=_("or a CSV file"),
        required=False,
        help_text=_("Columns: date, note; or the government's office calendar (是否放假)."),
    )
    default_kind = forms.ChoiceField(
        label=_("kind of the dates whose note names none"),
        choices=[c for c in ClinicDay.Kind.choices if c[0] != ClinicDay.Kind.WORKDAY],
        initial=ClinicDay.Kind.HOLIDAY,
    )

    MAX_UPLOAD = 1_000_000  # a year's calendar is a few kilobytes

    def clean(self):
        data = super().clean()
        upload = data.get("csv_file")
        if not data.get("lines", "").strip() and not upload:
            raise ValidationError(_("Paste the dates or choose a CSV file."))
        if upload and upload.size > self.MAX_UPLOAD:
            raise ValidationError(_("The file is too large for a calendar."))
        kind = data.get("default_kind", ClinicDay.Kind.HOLIDAY)
        days, errors = [], []
        if data.get("lines", "").strip():
            result = clinic_days_parse_lines(data["lines"], default_kind=kind)
            days += result.days
            errors += result.errors
        if upload:
            try:
                result = clinic_days_parse_csv(upload.read(), default_kind=kind)
            except UnicodeDecodeError:
                raise ValidationError(_("Save the CSV file as UTF-8 or Big5.")) from None
            days += result.days
            errors += result.errors
        if errors:
            raise ValidationError(errors)
        if not days:
            raise ValidationError(_("No dates were found."))
        data["days"] = days
        return data


@admin.register(ClinicDay)
class ClinicDayAdmin(admin.ModelAdmin):
    list_display = ["date", "weekday", "kind", "open", "note"]
    list_filter = ["kind", "open"]
    date_hierarchy = "date"
    search_fields = ["note"]
    fields = ["date", "kind", "note"]
    change_list_template = "admin/patients/clinicday/change_list.html"

    @admin.display(description=_("weekday"))
    def weekday(self, obj):
        return WEEKDAYS[obj.date.weekday()][1]

    def get_urls(self):
        urls = super().get_urls()
        view = self.admin_site.admin_view(self.import_view)
        return [path("import/", view, name="patients_clinicday_import"), *urls]

    def import_view(self, request):
        if not self.has_add_permission(request) or not self.has_change_permission(request):
            raise PermissionDenied
        form = ClinicDayImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            added, changed = clinic_days_save(days=form.cleaned_data["days"])
            self.message_user(
                request,
                _("%(added)d date(s) added, %(changed)d updated.")
                % {"added": added, "changed": changed},
            )
            return redirect("admin:patients_clinicday_changelist")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Import closure dates"),
            "form": form,
        }
        return TemplateResponse(request, "admin/patients/clinicday/import.html", context)


# The import pages (upload, map, preview, runs) and saved mappings register themselves there.
import patients.admin_imports  # noqa: E402, F401
