"""Admin pages that show patient data write an audit entry for every page they show; and the
read-only pages for what only the system writes (audit log, skips, outbox, attempts)."""

from django.template.response import TemplateResponse

from patients.models import AuditEntry
from patients.services import audit_record


class AuditedAdminMixin:
    """Audits the change list (the patients on the page) and the change form (one record).

    Subclasses say which patients a list of their objects shows, via `audited_patient_ids`.
    """

    def audited_patient_ids(self, objects) -> list[int]:
        raise NotImplementedError

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if isinstance(response, TemplateResponse) and changelist is not None:
            ids = self.audited_patient_ids(changelist.result_list)
            if ids:
                audit_record(
                    actor=request.user,
                    action=AuditEntry.Action.SEARCH if changelist.query else AuditEntry.Action.LIST,
                    patients=ids,
                    path=request.path,
                    detail=self.model._meta.verbose_name_plural,
                )
        return response

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        response = super().changeform_view(request, object_id, form_url, extra_context)
        original = getattr(response, "context_data", {}).get("original")
        if isinstance(response, TemplateResponse) and original is not None:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.VIEW,
                patients=self.audited_patient_ids([original]),
                path=request.path,
                detail=self.model._meta.verbose_name,
            )
        return response


class ReadOnlyAdminMixin:
    """For a ModelAdmin or an inline of rows staff may read but never add, change or delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
