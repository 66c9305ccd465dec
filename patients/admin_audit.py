"""Admin pages that show patient data write an audit entry for every page they show; and the
read-only pages for what only the system writes (audit log, skips, outbox, attempts).

What is audited is which patients a page showed and which page it was (its path, never its
query string): a search term is itself patient data (a phone number, a national ID, a name), so
it stays out of the log. A search is audited even when it finds nobody, so that someone trying
national IDs one after another shows up in the log.
"""

from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib.admin import AdminSite, ModelAdmin
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.db.models import Model, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest, HttpResponseBase
from django.template.response import TemplateResponse

from patients.models import AuditEntry, Patient
from patients.services import audit_record

if TYPE_CHECKING:
    # To mypy the mixin is the ModelAdmin it is always mixed into (self.model, super() views).
    _AdminBase = ModelAdmin[Any]
else:
    _AdminBase = object


class AuditedAdminMixin(_AdminBase):
    """Audits the change list (the patients on the page), the change form, history and delete
    pages (one record), and an action's confirmation page (the rows chosen).

    Subclasses say which patients a list of their objects shows, via `audited_patient_ids`; the
    admin's autocomplete asks the same of the admin whose objects it looks up.
    """

    # False for a list that names no patient (the audit log: a count per entry); its searches
    # and single pages are still audited.
    audit_plain_lists = True

    def audited_patient_ids(self, objects) -> list[int]:
        raise NotImplementedError

    def audited_search_ids(self, request, term: str, objects) -> list[int]:
        """The patients a search for `term` showed: by default, those of the rows found."""
        return self.audited_patient_ids(objects)

    def _audit(self, request, action: str, patient_ids, detail) -> None:
        audit_record(
            actor=request.user,
            action=action,
            patients=patient_ids,
            path=request.path,
            detail=str(detail),
        )

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        if not isinstance(response, TemplateResponse):
            return response
        context = response.context_data or {}
        changelist = context.get("cl")
        plural = self.model._meta.verbose_name_plural
        if changelist is not None and changelist.query:
            ids = self.audited_search_ids(request, changelist.query, changelist.result_list)
            self._audit(request, AuditEntry.Action.SEARCH, ids, plural)
        elif changelist is not None and self.audit_plain_lists:
            ids = self.audited_patient_ids(changelist.result_list)
            if ids:
                self._audit(request, AuditEntry.Action.LIST, ids, plural)
        elif changelist is None and context.get("queryset") is not None:
            # An action asking to confirm (delete selected) lists the rows chosen.
            ids = self.audited_patient_ids(context["queryset"])
            if ids:
                self._audit(request, AuditEntry.Action.LIST, ids, plural)
        return response

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        response = super().changeform_view(request, object_id, form_url, extra_context)
        original = getattr(response, "context_data", {}).get("original")
        if isinstance(response, TemplateResponse) and original is not None:
            self._audit_one(request, original)
        return response

    def history_view(self, request, object_id, extra_context=None):
        response = super().history_view(request, object_id, extra_context)
        self._audit_object_page(request, response)
        return response

    def delete_view(self, request, object_id, extra_context=None):
        response = super().delete_view(request, object_id, extra_context)
        self._audit_object_page(request, response)
        return response

    def _audit_object_page(self, request, response) -> None:
        obj = getattr(response, "context_data", {}).get("object")
        if isinstance(response, TemplateResponse) and obj is not None:
            self._audit_one(request, obj)

    def _audit_one(self, request, obj) -> None:
        ids = self.audited_patient_ids([obj])
        self._audit(request, AuditEntry.Action.VIEW, ids, self.model._meta.verbose_name)


class AuditedAutocompleteJsonView(AutocompleteJsonView):
    """The admin's autocomplete (the patient box on a visit, prescription, consent entry, …).

    It looks patients up by national ID, phone or name through PatientAdmin.get_search_results,
    so every answer is audited like a search of the list: who, which patients came back, from
    which field; not the term.
    """

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if isinstance(self.model_admin, AuditedAdminMixin):
            # Evaluated here once; get() then serialises these same cached rows.
            objects = list(context["object_list"])
            if self.term:
                ids = self.model_admin.audited_search_ids(self.request, self.term, objects)
            else:
                ids = self.model_admin.audited_patient_ids(objects)
            if ids or self.term:
                source = self.source_field
                audit_record(
                    actor=self.request.user,
                    action=AuditEntry.Action.SEARCH if self.term else AuditEntry.Action.LIST,
                    patients=ids,
                    path=self.request.path,
                    detail=f"{source.model._meta.verbose_name}: {source.verbose_name}",
                )
        return context


def audit_autocomplete(site: AdminSite) -> None:
    """Serve `site`'s autocomplete through AuditedAutocompleteJsonView.

    Must run before the site's URLs are built (admin modules are imported first, at startup).
    """

    def autocomplete_view(request: HttpRequest) -> HttpResponseBase:
        return AuditedAutocompleteJsonView.as_view(admin_site=site)(request)

    # Replacing the method on this one site object is the point (a subclass would change which
    # site class the project uses), and mypy refuses any assignment to a method; django-stubs
    # also types the method's answer HttpResponse, though Django's own returns View.as_view()'s.
    site.autocomplete_view = autocomplete_view  # type: ignore[method-assign, assignment]


class ReadOnlyAdminMixin:
    """For a ModelAdmin or an inline of rows staff may read but never add, change or delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


_RowT = TypeVar("_RowT", bound=Model)


class LatestFormSet(BaseInlineFormSet[_RowT, Patient, ModelForm[_RowT]]):
    """Only the newest rows of a patient's records on the patient page: a patient of many years
    has hundreds of visits and messages, and drawing them all made the page slow. The template
    admin/latest_tabular.html says how many there are and links to all of them."""

    latest = 20
    total: int  # set with _latest, on the first get_queryset; the template shows it
    _latest: QuerySet[_RowT]

    def get_queryset(self) -> QuerySet[_RowT]:
        if not hasattr(self, "_latest"):
            rows = super().get_queryset()
            self.total = rows.count()
            self._latest = rows[: self.latest]
        return self._latest
