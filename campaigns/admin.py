from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Field
from django.forms.formsets import DELETION_FIELD_NAME
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import capfirst, format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST
from django_stubs_ext import StrOrPromise

from campaigns.context import sample_context
from campaigns.models import MessageTemplate, Rule, RuleKind, Skip
from campaigns.preview import PLAN_DAYS, occurrence_label, patient_plan
from campaigns.services import rule_note_switch_on
from campaigns.templating import (
    BODY_MAX_CHARS,
    SUBJECT_MAX_CHARS,
    RenderedText,
    TemplateProblem,
    TemplateRenderError,
    check_template,
    render,
    render_message,
    sms_size,
)
from consent.models import Channel
from patients.admin import PagePanel, PatientPage
from patients.admin_audit import AuditedAdminMixin, ReadOnlyAdminMixin
from patients.models import Appointment, AuditEntry, ClinicProfile, Language, Patient, Visit
from patients.services import audit_record

# What staff type between list items: a comma, or the full-width comma and enumeration comma a
# Chinese input method gives.
LIST_SEPARATORS = ("，", "、", ";", "；")


class CommaListField(forms.CharField):
    """A JSON list typed as "1, 3, 7"; `item` turns each piece into a value or raises ValueError."""

    default_error_messages = {
        "invalid_item": _("Not understood: %(bad)s."),
    }

    def __init__(self, *, item: Callable[[str], object] = str, **kwargs: Any) -> None:
        self.item = item
        super().__init__(**kwargs)

    def prepare_value(self, value: object) -> object:
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return value

    # A text box whose value is a list: CharField's stub says its value is text.
    def to_python(self, value: str | None) -> list[object]:  # type: ignore[override]
        text = (value or "").strip().strip("[]")
        for separator in LIST_SEPARATORS:
            text = text.replace(separator, ",")
        pieces = [piece.strip().strip("\"'") for piece in text.split(",")]
        values: list[object] = []
        bad: list[str] = []
        for piece in filter(None, pieces):
            try:
                values.append(self.item(piece))
            except ValueError:
                bad.append(piece)
        if bad:
            raise ValidationError(
                self.error_messages["invalid_item"], params={"bad": ", ".join(bad)}
            )
        return values


def _label(name: str) -> StrOrPromise:
    # Declared form fields don't take the model field's label; keep its (translated) wording.
    field = Rule._meta.get_field(name)
    if not isinstance(field, Field):  # a reverse relation has no label of its own
        raise TypeError(f"Rule.{name} is not a field")
    return capfirst(field.verbose_name)


class ChannelOrderWidget(forms.MultiWidget):
    """One labelled drop-down per place in the order: first, second, third channel."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        choices = [("", "—"), *Channel.choices]
        super().__init__([forms.Select(choices=choices) for _c in Channel.values], attrs)

    def decompress(self, value: object) -> list[object]:
        order = list(value) if isinstance(value, list | tuple) else []
        return [*order, *[""] * len(Channel.values)][: len(Channel.values)]


class ChannelOrderField(forms.MultiValueField):
    """The channels to try, in order, each chosen by its name; stored as ["line", "sms"]."""

    widget = ChannelOrderWidget
    default_error_messages = {
        "required": _("Choose at least the first channel."),
        "twice": _("Each channel at most once."),
    }

    def __init__(self, **kwargs: Any) -> None:
        places = [
            forms.ChoiceField(choices=Channel.choices, required=False) for _c in Channel.values
        ]
        super().__init__(places, require_all_fields=False, **kwargs)

    def compress(self, data_list: list[str]) -> list[str]:
        order = [channel for channel in data_list if channel]
        if len(set(order)) != len(order):
            raise ValidationError(self.error_messages["twice"], code="twice")
        return order

    def clean(self, value: Any) -> list[str]:
        order: list[str] = super().clean(value) or []
        if self.required and not order:
            raise ValidationError(self.error_messages["required"], code="required")
        return order

    def has_changed(self, initial: Any, data: Any) -> bool:
        return list(initial or []) != self.compress([d for d in (data or []) if d])


def departments_in_use() -> list[tuple[str, str]]:
    """The departments on appointments and visits, as choices (their names are the labels)."""
    names = set(Appointment.objects.order_by().values_list("department", flat=True).distinct())
    names |= set(Visit.objects.order_by().values_list("department", flat=True).distinct())
    return [(name, name) for name in sorted(filter(None, names))]


class RuleForm(forms.ModelForm[Rule]):
    offsets = CommaListField(
        label=_label("offsets"),
        item=int,
        error_messages={
            "required": _("Give at least one offset, e.g. 1, 3, 7."),
            "invalid_item": _("Offsets are whole numbers separated by commas, not %(bad)s."),
        },
        help_text=_(
            "Whole numbers separated by commas: days from the anchor (negative = before), or "
            "minutes before the dose for medication doses. For example 1, 3, 7 or -7."
        ),
    )
    channel_order = ChannelOrderField(
        label=_label("channel_order"),
        help_text=_(
            "First, second and third choice; a later one is tried when the one before can't "
            "be used. The patient's preferred channel goes first when it is one of them."
        ),
    )
    sexes = forms.TypedMultipleChoiceField(
        label=_label("sexes"),
        choices=Patient.Sex.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None ticked: everyone."),
    )
    departments = forms.MultipleChoiceField(
        label=_label("departments"),
        choices=[],  # those in use, when the form is made
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("The appointment's or last visit's department; none ticked: all."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A department the rule names that no visit has any more stays ticked and can be undone.
        field = self.fields["departments"]
        if isinstance(field, forms.ChoiceField):
            choices = departments_in_use()
            known = {value for value, _label in choices}
            kept = [name for name in (self.instance.departments or []) if name not in known]
            field.choices = [*choices, *[(name, name) for name in kept]]
        if "holdout_percent" in self.fields:
            self.fields["holdout_percent"].required = False

    class Meta:
        model = Rule
        fields = [
            "name",
            "kind",
            "purpose",
            "enabled",
            "priority",
            "offsets",
            "send_time",
            "channel_order",
            "min_age",
            "max_age",
            "sexes",
            "conditions",
            "departments",
            "care_plan_key",
            "asks_confirmation",
            "staff_call",
            "holdout_percent",
        ]

    def clean_holdout_percent(self) -> int:
        # Left empty, the share is none: everyone gets the rule's messages.
        value: int | None = self.cleaned_data.get("holdout_percent")
        return value or 0

    def _update_errors(self, errors: ValidationError) -> None:
        # Rule.clean judges the instance, which keeps its old value for a field whose input was
        # refused above: its verdict on that field would repeat or contradict ours.
        if hasattr(errors, "error_dict"):
            kept = {name: e for name, e in errors.error_dict.items() if name not in self.errors}
            if not kept:
                return
            errors = ValidationError(kept)
        # A private hook of Django's model forms (the model's own clean reports through it), which
        # django-stubs leaves out.
        super()._update_errors(errors)  # type: ignore[misc]


class MessageTemplateForm(forms.ModelForm[MessageTemplate]):
    class Meta:
        model = MessageTemplate
        fields = ["channel", "language", "subject", "body"]
        widgets = {
            "body": forms.Textarea(attrs={"rows": 5, "cols": 80, "maxlength": BODY_MAX_CHARS})
        }
        help_texts = {
            "subject": _("E-mail only."),
            "body": format_lazy(
                "{} {} {}",
                _(
                    "Fields such as {{ patient.display_name }} or {{ clinic.phone }}, the filters "
                    '|default:"…", |upper and |lower, and {% if … %}…{% endif %}. Anything else is '
                    "refused with what is allowed. At most 2,000 characters."
                ),
                _('A link whose opening is counted: {% link "https://…" %} (at most 3).'),
                _(
                    "The patient's own page to choose which messages, channel and language: "
                    "{% settings_link %}."
                ),
            ),
        }


class TemplateFormSet(
    forms.BaseInlineFormSet[MessageTemplate, Rule, forms.ModelForm[MessageTemplate]]
):
    """Checks every text against the kind chosen on this page, also for a rule not saved yet.

    MessageTemplate.clean takes the kind from the template's rule only once that rule has a row;
    before, it accepts the fields of every kind (a birthday text naming an appointment). A text
    that passes is also rendered with the sample data, so one too long for its channel (which
    the planner would skip for every patient) is refused here.
    """

    def clean(self) -> None:
        super().clean()
        kind = self.instance.kind or None
        profile = ClinicProfile.load()
        for form in self.forms:
            data = getattr(form, "cleaned_data", {})
            if self.can_delete and data.get(DELETION_FIELD_NAME):
                continue
            for name, most in (("body", BODY_MAX_CHARS), ("subject", SUBJECT_MAX_CHARS)):
                if name in form.errors or name not in data:
                    continue
                try:
                    check_template(data[name], kind=kind, max_chars=most)
                except TemplateProblem as problem:
                    form.add_error(name, str(problem))
            if form.errors or data.get("channel") not in Channel.values:
                continue
            context = sample_context(kind or "", data["language"], profile, timezone.localdate())
            try:
                render_message(
                    subject=data["subject"],
                    body=data["body"],
                    context=context,
                    channel=data["channel"],
                )
            except TemplateRenderError as error:
                form.add_error("subject" if error.in_subject else "body", str(error))


def template_preview(
    *, kind: str, channel: str, language: str, body: str, subject: str
) -> dict[str, object]:
    """A template rendered with made-up sample data (no patient's), and its SMS size.

    Never raises: a problem with the template, or a text too long for the channel, comes back
    as ok=False and the error. The source limits checked first bound the work and the answer.
    """
    rule_kind = kind if kind in RuleKind.values else None
    language = language if language in Language.values else Language.ZH_HANT
    result: dict[str, object] = {
        "ok": False,
        "text": "",
        "subject": "",
        "encoding": None,
        "units": None,
        "segments": None,
        "size": "",
        "error": "",
    }
    try:
        check_template(body, kind=rule_kind)
        check_template(subject, kind=rule_kind, max_chars=SUBJECT_MAX_CHARS)
    except TemplateProblem as problem:
        result["error"] = str(problem)
        return result
    context = sample_context(rule_kind or "", language, ClinicProfile.load(), timezone.localdate())
    try:
        if channel in Channel.values:
            rendered = render_message(subject=subject, body=body, context=context, channel=channel)
        else:  # no channel chosen yet: the text alone
            rendered = RenderedText(subject="", body=render(body, context))
    except TemplateRenderError as error:
        result["error"] = str(_("The text could not be rendered: %(error)s") % {"error": error})
        return result
    text = rendered.body
    result.update(ok=True, text=text, subject=rendered.subject)
    if channel == Channel.SMS:
        size = sms_size(text)
        result.update(encoding=size.encoding, units=size.units, segments=size.segments)
        result["size"] = " · ".join(
            [
                size.encoding,
                ngettext("%(count)d character", "%(count)d characters", size.units)
                % {"count": size.units},
                ngettext("%(count)d segment", "%(count)d segments", size.segments)
                % {"count": size.segments},
            ]
        )
    return result


def preview_html(preview: Mapping[str, object], *, url: str, kind: str) -> str:
    """The preview box under a template text; template_preview.js refills it while typing."""
    return format_html(
        '<div class="template-preview" data-url="{url}" data-kind="{kind}" aria-live="polite">'
        '<div class="template-preview-subject"{subject_hidden}>{subject}</div>'
        '<div class="template-preview-text"{text_hidden}>{text}</div>'
        '<div class="template-preview-size"{size_hidden}>{size}</div>'
        '<div class="template-preview-error errornote"{error_hidden}>{error}</div>'
        "</div>",
        url=url,
        kind=kind,
        subject=preview["subject"],
        subject_hidden=_hidden(preview["subject"]),
        text=preview["text"],
        text_hidden=_hidden(preview["text"]),
        size=preview["size"],
        size_hidden=_hidden(preview["size"]),
        error=preview["error"],
        error_hidden=_hidden(preview["error"]),
    )


def _hidden(value: object) -> str:
    return "" if value else " hidden"


class MessageTemplateInline(admin.StackedInline[MessageTemplate, Rule]):
    model = MessageTemplate
    form = MessageTemplateForm
    formset = TemplateFormSet
    fields = [("channel", "language"), "subject", "body", "preview"]
    readonly_fields = ["preview"]

    class Media:
        js = ["campaigns/template_preview.js"]
        css = {"all": ["campaigns/template_preview.css"]}

    def get_extra(self, request: HttpRequest, obj: Rule | None = None, **kwargs: object) -> int:
        return 0 if obj else 1

    @admin.display(description=_("preview with sample data"))
    def preview(self, obj: MessageTemplate | None) -> str:
        url = reverse("admin:campaigns_rule_preview")
        if obj is None or obj.pk is None:
            empty = {"subject": "", "text": "", "size": "", "error": ""}
            return preview_html(empty, url=url, kind="")
        preview = template_preview(
            kind=obj.rule.kind,
            channel=obj.channel,
            language=obj.language,
            body=obj.body,
            subject=obj.subject,
        )
        return preview_html(preview, url=url, kind=obj.rule.kind)


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin[Rule]):
    form = RuleForm
    list_display = ["name", "kind", "purpose", "enabled", "channels", "priority"]
    list_editable = ["enabled"]
    list_filter = ["kind", "purpose", "enabled"]
    search_fields = ["name"]
    filter_horizontal = ["conditions"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "purpose", "enabled", "priority"]}),
        (_("When"), {"fields": ["offsets", "send_time"]}),
        (_("How"), {"fields": ["channel_order"]}),
        (
            _("Who"),
            {
                "fields": [
                    "min_age",
                    "max_age",
                    "sexes",
                    "conditions",
                    "departments",
                    "care_plan_key",
                ]
            },
        ),
        (_("Options"), {"fields": ["asks_confirmation", "staff_call"]}),
        (_("Measuring"), {"fields": ["holdout_percent", "enabled_since"]}),
    ]
    readonly_fields = ["enabled_since"]
    inlines = [MessageTemplateInline]

    def save_model(self, request: HttpRequest, obj: Rule, form: Any, change: bool) -> None:
        # Also the list page's "enabled" boxes come through here, one form per changed row.
        was_enabled = bool(change and form.initial.get("enabled"))
        rule_note_switch_on(obj, was_enabled=was_enabled, now=timezone.now())
        super().save_model(request, obj, form, change)

    @admin.display(description=_("channel order"))
    def channels(self, obj: Rule) -> str:
        return " → ".join(str(Channel(channel).label) for channel in obj.channel_order)

    def get_urls(self) -> list[URLPattern]:
        preview = self.admin_site.admin_view(self.preview_view)
        plan = self.admin_site.admin_view(patient_plan_view)
        # Before the default URLs: "<path:object_id>/" would take "preview/" for a rule's id.
        return [
            path("preview/", preview, name="campaigns_rule_preview"),
            path("plan/<int:patient_id>/", plan, name="campaigns_rule_patient_plan"),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        # Only made-up sample data is rendered, no patient's: nothing to audit.
        if not self.has_view_permission(request):
            raise PermissionDenied
        return _preview_post(request)


@require_POST
def _preview_post(request: HttpRequest) -> JsonResponse:
    data = request.POST
    preview = template_preview(
        kind=data.get("kind", ""),
        channel=data.get("channel", ""),
        language=data.get("language", ""),
        body=data.get("body", ""),
        subject=data.get("subject", ""),
    )
    return JsonResponse(preview)


@admin.register(Skip)
class SkipAdmin(ReadOnlyAdminMixin, AuditedAdminMixin, admin.ModelAdmin[Skip]):
    """Read-only: skips are written by the planner, one per due patient who got no message."""

    list_display = ["rule", "patient_chart_no", "reason", "at"]
    list_filter = ["reason", "rule"]
    list_select_related = ["rule", "patient"]
    search_fields = ["patient__chart_no"]
    search_help_text = _("Chart number.")
    fields = ("rule", "patient", "occurrence", "reason", "at")
    readonly_fields = fields

    def audited_patient_ids(self, objects: Iterable[Skip]) -> list[int]:
        return [obj.patient_id for obj in objects]

    @admin.display(description=_("chart number"), ordering="patient__chart_no")
    def patient_chart_no(self, obj: Skip) -> str:
        return obj.patient.chart_no

    @admin.display(description=_("occurrence"))
    def occurrence(self, obj: Skip) -> str:
        return occurrence_label(obj.occurrence_key)


# --- On the patient page: what the rules will send in the coming days ----------------------------


def planned_messages_panel(request: HttpRequest, patient: Patient) -> PagePanel | None:
    """A place on the patient page that loads the planner's dry run for the patient
    (campaigns.preview) once the page is shown: the page itself stays fast."""
    if patient.erased_at is not None:
        return None
    url = reverse("admin:campaigns_rule_patient_plan", args=[patient.pk])
    return PagePanel("campaigns/patient_plan_place.html", url=url, days=PLAN_DAYS)


def patient_plan_view(request: HttpRequest, patient_id: int) -> HttpResponse:
    """The messages planned for one patient, as the panel's HTML; audited as a view of the
    patient, for whoever may open the patient's page."""
    patient_admin = admin.site._registry.get(Patient)
    if patient_admin is None or not patient_admin.has_view_permission(request):
        raise PermissionDenied
    patient = get_object_or_404(Patient, pk=patient_id, erased_at__isnull=True)
    rows = patient_plan(patient=patient, now=timezone.now(), days=PLAN_DAYS)
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.VIEW,
        patients=[patient.pk],
        path=request.path,
        detail=str(_("messages planned")),
    )
    context = {"panel": {"rows": rows, "days": PLAN_DAYS}}
    return TemplateResponse(request, "campaigns/patient_plan.html", context)


def care_plans_in_use() -> list[tuple[str, str]]:
    """The care plans the post-op rules name, each labelled with those rules' names."""
    names: dict[str, list[str]] = {}
    rules = Rule.objects.exclude(care_plan_key="").order_by("care_plan_key", "priority", "name")
    for key, name in rules.values_list("care_plan_key", "name"):
        names.setdefault(key, []).append(name)
    return [(key, f"{key}（{'、'.join(rule_names)}）") for key, rule_names in names.items()]


PatientPage.panels = [*PatientPage.panels, planned_messages_panel]
PatientPage.care_plan_sources = [*PatientPage.care_plan_sources, care_plans_in_use]
