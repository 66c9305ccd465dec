from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from patients.fhir import MAX_BUNDLE_BYTES, FhirImportError, ImportReport, bundle_import

# No staff account runs a management command; the audit log names the command instead.
ACTOR = "manage.py import_fhir"
KINDS = ("Patient", "Encounter", "MedicationRequest", "Procedure", "Appointment", "Consent")


class Command(BaseCommand):
    help = (
        "Import a FHIR R4 Bundle (Patient, Encounter, MedicationRequest, Procedure, Appointment, "
        "Consent), all or nothing; patients are matched by chart number, national ID, then "
        "phone and birth date."
    )

    def add_arguments(self, parser):
        parser.add_argument("bundle", type=Path, help="The Bundle as a JSON file.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Check and count everything, write nothing."
        )

    def handle(self, *args, bundle: Path, dry_run: bool, **options):
        try:
            # Refuse an oversized file before reading it into memory.
            if bundle.stat().st_size > MAX_BUNDLE_BYTES:
                limit = MAX_BUNDLE_BYTES // 2**20
                raise CommandError(
                    f"{bundle}：檔案太大，上限 {limit} MB（file too large, limit {limit} MB）"
                )
            data = bundle.read_bytes()
        except OSError as exc:
            raise CommandError(f"無法讀取 {bundle}（can't read it: {exc.strerror}）") from exc
        try:
            report = bundle_import(data, now=timezone.now(), actor=ACTOR, dry_run=dry_run)
        except FhirImportError as exc:
            count = len(exc.problems)
            raise CommandError(
                f"{bundle} 未匯入任何資料，{count} 個問題（nothing imported, {count} problems）:\n"
                f"{exc}"
            ) from None
        self.stdout.write(self._summary(report))

    @staticmethod
    def _summary(report: ImportReport) -> str:
        lines = [
            "試算，未寫入（dry run, nothing written）" if report.dry_run else "匯入完成（imported）"
        ]
        for kind in KINDS:
            counts = (report.created[kind], report.updated[kind], report.unchanged[kind])
            if any(counts):
                lines.append(
                    f"  {kind}: 新增 {counts[0]}、更新 {counts[1]}、未變 {counts[2]} "
                    f"(created, updated, unchanged)"
                )
        lines.extend(f"  {change}" for change in report.changes)
        lines.append(f"  sha256:{report.checksum}")
        return "\n".join(lines)
