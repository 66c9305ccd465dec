from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from consent.models import ConsentEntry, ConsentState
from consent.services import consent_record
from patients.admin_audit import AuditedAdminMixin, ReadOnlyAdminMixin

LEDGER_FIELDS = ["purpose", "channel", "action", "source", "evidence"]


def _record(form, *, patient, recorded_by) -> ConsentEntry:
    data = form.cleaned_data
    return consent_record(
        patient=patient,
        recorded_by=recorded_by,
        **{name: data[name] for name in LEDGER_FIELDS},
    )


class LedgerFormSet(forms.BaseInlineFormSet):
    """New rows go through consent_record, so the current-state table moves with the ledger."""

    recorded_by = None

    def save_new(self, form, commit=True):
        return _record(form, patient=self.instance, recorded_by=self.recorded_by)


class ConsentEntryInline(admin.TabularInline):
    """Add-only: past entries are shown read-only; a change of mind is a new entry."""

    model = ConsentEntry
    formset = LedgerFormSet
    extra = 0
    fields = [*LEDGER_FIELDS, "recorded_by", "recorded_at"]
    readonly_fields = ["recorded_by", "recorded_at"]
    can_delete = False
    verbose_name_plural = _("consent ledger (add a new entry to change consent)")

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.recorded_by = request.user
        return formset

    def has_change_permission(self, request, obj=None):
        return False


class ConsentStateInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ConsentState
    fields = ("purpose", "channel", "granted", "changed_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = _("current consent")


@admin.register(ConsentEntry)
class ConsentEntryAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["recorded_at", "patient", "purpose", "channel", "action", "source"]
    list_filter = ["purpose", "channel", "action", "source", "recorded_at"]
    search_fields = ["patient__chart_no"]
    autocomplete_fields = ["patient"]
    fields = ["patient", *LEDGER_FIELDS]
    date_hierarchy = "recorded_at"

    def audited_patient_ids(self, objects):
        return [obj.patient_id for obj in objects]

    def save_model(self, request, obj, form, change):
        entry = _record(form, patient=form.cleaned_data["patient"], recorded_by=request.user)
        obj.pk, obj._state.adding = entry.pk, False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
