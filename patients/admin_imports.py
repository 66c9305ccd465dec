"""Admin pages for bringing records in: upload a file, map its columns, preview, check or
import in the worker, and follow the run. Saved mappings are edited here too.

Who may: staff who may add patients (the front desk and the manager). Every page that shows
imported data (the preview, a run's row errors, the rejects file) writes an audit entry.
"""

import csv
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from clinic_crm.normalise import identifier_key
from patients.imports import admin_flow, feed
from patients.imports.kinds import KINDS
from patients.imports.mapping import MappingError, check_mapping, suggest_mapping
from patients.models import AuditEntry, ImportKind, ImportMapping, ImportRun, Patient
from patients.services import audit_record

PERMISSION = "patients.add_patient"
# patients.imports keeps the first 200 row errors on the run; the rejects file has them all.
ERRORS_KEPT = 200


def may_import(request: HttpRequest) -> bool:
    return bool(
        request.user.is_active and request.user.is_staff and request.user.has_perm(PERMISSION)
    )


class UploadForm(forms.Form):
    kind = forms.ChoiceField(label=_("records"), choices=ImportKind.choices)
    file = forms.FileField(
        label=_("file"), help_text=_("A CSV (UTF-8 or Big5) or Excel (.xlsx) export of your HIS.")
    )


class MappingForm(forms.Form):
    """One select per column of the file (a field, or left out), the encoding, and an optional
    name to save the mapping under."""

    encoding = forms.ChoiceField(
        label=_("encoding"), choices=admin_flow.ENCODING_CHOICES, required=False
    )
    save_as = forms.CharField(
        label=_("save this mapping as"),
        max_length=100,
        required=False,
        help_text=_("Saved mappings are offered for the next file and used by the daily feed."),
    )

    def __init__(self, *args: Any, kind: str, headers: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kind, self.headers = kind, headers
        spec = KINDS[kind]
        choices = [("", _("(leave out)"))] + [
            (f.name, f.label + ("（必填）" if f.required else "")) for f in spec.fields
        ]
        for index, header in enumerate(headers):
            self.fields[f"column_{index}"] = forms.ChoiceField(
                label=header or f"#{index + 1}", choices=choices, required=False
            )

    def column_fields(self) -> list[forms.BoundField]:
        return [self[f"column_{i}"] for i in range(len(self.headers))]

    def columns(self) -> dict[str, str]:
        return {h: self.cleaned_data.get(f"column_{i}") or "" for i, h in enumerate(self.headers)}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            check_mapping(self.kind, self.headers, self.columns())
        except MappingError as exc:
            raise forms.ValidationError(exc.reason) from exc
        return data


class RunOptionsForm(forms.Form):
    label_suffix = ""
    keep_good = forms.BooleanField(
        label=_("import the good rows and set the bad ones aside in a file"), required=False
    )
    full_day = forms.BooleanField(
        label=_("the file is the HIS's whole list for its days (cancel bookings no longer in it)"),
        required=False,
    )


class ImportMappingAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "source", "encoding", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "source"]
    fields = ["name", "kind", "source", "encoding", "columns", "feed_folder"]
    readonly_fields = ["feed_folder"]

    @admin.display(description=_("daily feed folder"))
    def feed_folder(self, obj: ImportMapping) -> str:
        folder = feed.feed_folder(obj) if obj.pk else None
        return str(folder) if folder is not None else "—"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_import(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_import(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_import(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_import(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_import(request)


class ImportRunAdmin(admin.ModelAdmin):
    list_display = [
        "queued_at",
        "file_name",
        "kind",
        "origin",
        "dry_run",
        "status",
        "added",
        "updated",
        "rejected",
    ]
    list_filter = ["status", "origin", "kind", "dry_run"]
    date_hierarchy = "queued_at"
    change_list_template = "admin/patients/importrun/change_list.html"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_import(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_import(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_import(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("upload/", wrap(self.upload_view), name="patients_importrun_upload"),
            path("upload/<str:token>/map/", wrap(self.map_view), name="patients_importrun_map"),
            path(
                "upload/<str:token>/preview/",
                wrap(self.preview_view),
                name="patients_importrun_preview",
            ),
            path("<int:pk>/rejects/", wrap(self.rejects_view), name="patients_importrun_rejects"),
            *super().get_urls(),
        ]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        return redirect("admin:patients_importrun_upload")

    # --- the steps ---------------------------------------------------------------------------

    def _context(self, request: HttpRequest, title: Any, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            **extra,
        }

    def _upload(self, request: HttpRequest, token: str) -> admin_flow.Upload:
        if not may_import(request):
            raise PermissionDenied
        try:
            return admin_flow.upload_load(token, request.user)
        except LookupError:
            raise Http404(
                _("This upload is no longer available; please upload the file again.")
            ) from None

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not may_import(request):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                upload = admin_flow.upload_store(
                    kind=form.cleaned_data["kind"],
                    uploaded=form.cleaned_data["file"],
                    user=request.user,
                    now=timezone.now(),
                )
            except admin_flow.UploadError as exc:
                form.add_error("file", exc.reason)
            else:
                return redirect("admin:patients_importrun_map", token=upload.token)
        context = self._context(
            request,
            _("Import records"),
            form=form,
            max_mb=settings.IMPORT_MAX_UPLOAD_MB,
        )
        return TemplateResponse(request, "admin/patients/importrun/upload.html", context)

    def map_view(self, request: HttpRequest, token: str) -> HttpResponse:
        upload = self._upload(request, token)
        saved = ImportMapping.objects.filter(kind=upload.kind)
        chosen = request.GET.get("mapping")
        if request.method == "GET" and chosen and chosen.isdigit():
            mapping = get_object_or_404(saved, pk=int(chosen))
            upload.columns, upload.encoding = dict(mapping.columns), mapping.encoding
            upload.mapping_id = mapping.pk
            upload.save()
            return redirect("admin:patients_importrun_map", token=token)
        encoding = (
            request.POST.get("encoding", upload.encoding)
            if request.method == "POST"
            else upload.encoding
        )
        read_error = ""
        try:
            upload.encoding = encoding
            headers, used = admin_flow.upload_headers(upload)
        except admin_flow.UploadError as exc:
            # A wrong encoding chosen: say so and let the clerk choose another.
            read_error, headers, used = exc.reason, [], ""
        initial = {"encoding": upload.encoding}
        current = upload.mapping
        if current is not None:
            initial["save_as"] = current.name
        columns = upload.columns
        if headers and set(columns) != set(headers):
            # Read with another encoding, the headers are other strings: suggest afresh.
            columns = suggest_mapping(upload.kind, headers).columns
        for index, header in enumerate(headers):
            initial[f"column_{index}"] = columns.get(header, "")
        form = MappingForm(
            request.POST if request.method == "POST" else None,
            kind=upload.kind,
            headers=headers,
            initial=initial,
        )
        if (
            request.method == "POST"
            and not read_error
            and "reread" not in request.POST
            and form.is_valid()
        ):
            try:
                admin_flow.upload_set_mapping(
                    upload=upload,
                    columns=form.columns(),
                    encoding=form.cleaned_data["encoding"],
                    save_as=form.cleaned_data["save_as"].strip(),
                )
            except MappingError as exc:
                form.add_error("save_as", exc.reason)
            except ValidationError as exc:  # a name ImportMapping's validators refuse
                form.add_error("save_as", " ".join(exc.messages))
            else:
                return redirect("admin:patients_importrun_preview", token=token)
        if request.method == "POST" and "reread" in request.POST:
            upload.save()
            return redirect("admin:patients_importrun_map", token=token)
        spec = KINDS[upload.kind]
        context = self._context(
            request,
            _("Map the columns"),
            upload=upload,
            kind_label=spec.label,
            form=form,
            saved=saved,
            used_encoding=admin_flow.encoding_label(used),
            read_error=read_error,
            required=[f.label for f in spec.fields if f.required],
        )
        return TemplateResponse(request, "admin/patients/importrun/map.html", context)

    def preview_view(self, request: HttpRequest, token: str) -> HttpResponse:
        upload = self._upload(request, token)
        options = RunOptionsForm(request.POST or None)
        if request.method == "POST" and options.is_valid():
            dry_run = "import" not in request.POST
            try:
                run = admin_flow.run_queue(
                    upload=upload,
                    user=request.user,
                    dry_run=dry_run,
                    keep_good=options.cleaned_data["keep_good"],
                    full_day=options.cleaned_data["full_day"]
                    and upload.kind == ImportKind.APPOINTMENTS,
                )
            except (MappingError, admin_flow.UploadError) as exc:
                messages.error(request, exc.reason)
                return redirect("admin:patients_importrun_map", token=token)
            url = reverse("admin:patients_importrun_change", args=[run.pk])
            return redirect(f"{url}?upload={token}" if dry_run else url)
        error = ""
        preview = None
        try:
            preview = admin_flow.preview_rows(upload=upload, now=timezone.now())
        except (MappingError, admin_flow.UploadError) as exc:
            error = exc.reason
        if preview is not None:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.VIEW,
                patients=admin_flow.preview_patient_ids(preview),
                path=request.path,
                detail=f"匯入預覽：{upload.file_name}",
            )
        context = self._context(
            request,
            _("Preview"),
            upload=upload,
            kind_label=KINDS[upload.kind].label,
            preview=preview,
            error=error,
            encoding=admin_flow.encoding_label(preview.encoding) if preview else "",
            options=options,
            appointments=upload.kind == ImportKind.APPOINTMENTS,
        )
        return TemplateResponse(request, "admin/patients/importrun/preview.html", context)

    # --- a run ---------------------------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not may_import(request):
            raise PermissionDenied
        run = get_object_or_404(
            ImportRun.objects.select_related("started_by", "mapping"), pk=object_id
        )
        if run.errors:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.VIEW,
                patients=[],
                path=request.path,
                detail=f"匯入紀錄 #{run.pk} 的錯誤列",
            )
        upload = None
        token = request.GET.get("upload", "")
        if token and run.dry_run and run.status == ImportRun.Status.DONE:
            try:
                upload = admin_flow.upload_load(token, request.user)
            except LookupError:
                upload = None
        working = run.status in (ImportRun.Status.QUEUED, ImportRun.Status.RUNNING)
        # Still queued after a while: the worker (qcluster) is probably not running.
        waiting = run.status == ImportRun.Status.QUEUED and (
            timezone.now() - run.queued_at
        ) > timedelta(minutes=2)
        context = self._context(
            request,
            run.file_name,
            run=run,
            kind_label=KINDS[run.kind].label,
            encoding=admin_flow.encoding_label(run.encoding),
            working=working,
            waiting=waiting,
            rejects=admin_flow.rejects_file(run) is not None,
            upload=upload,
            errors_truncated=len(run.errors) >= ERRORS_KEPT,
            options=RunOptionsForm(
                initial={"keep_good": not run.all_or_nothing, "full_day": run.full_day}
            ),
            appointments=run.kind == ImportKind.APPOINTMENTS,
        )
        return TemplateResponse(request, "admin/patients/importrun/run.html", context)

    def rejects_view(self, request: HttpRequest, pk: int) -> HttpResponseBase:
        if not may_import(request):
            raise PermissionDenied
        run = get_object_or_404(ImportRun, pk=pk)
        found = admin_flow.rejects_file(run)
        if found is None:
            raise Http404(_("The file of rejected rows is no longer kept."))
        audit_record(
            actor=request.user,
            action=AuditEntry.Action.EXPORT,
            patients=_rejected_patient_ids(run, found),
            path=request.path,
            detail=f"匯入紀錄 #{run.pk} 的錯誤列檔案",
        )
        name = f"import-{run.pk}-rejects.csv"
        return FileResponse(
            found.open("rb"), as_attachment=True, filename=name, content_type="text/csv"
        )


def _rejected_patient_ids(run: ImportRun, path: Any) -> list[int]:
    """Stored patients named (by chart number) in a rejects file: what its download exposes."""
    header = next((h for h, name in run.columns.items() if name == "chart_no"), None)
    if header is None:
        return []
    ids: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        headers = next(reader, [])
        if header not in headers:
            return []
        index = headers.index(header)
        batch: set[str] = set()
        for row in reader:
            if index < len(row) and row[index].strip():
                batch.add(identifier_key(row[index]))
            if len(batch) >= 1000:
                ids += Patient.objects.filter(chart_no__in=batch).values_list("pk", flat=True)
                batch = set()
        if batch:
            ids += Patient.objects.filter(chart_no__in=batch).values_list("pk", flat=True)
    return ids


admin.site.register(ImportMapping, ImportMappingAdmin)
admin.site.register(ImportRun, ImportRunAdmin)
