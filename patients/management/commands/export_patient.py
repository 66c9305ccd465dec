import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from patients.models import Patient
from patients.services import patient_export

# No staff account runs a management command; the audit log names the command instead.
ACTOR = "manage.py export_patient"


class Command(BaseCommand):
    help = "Write everything held about one patient as JSON, for a patient's request for access."

    def add_arguments(self, parser):
        parser.add_argument("chart_no", help="The patient's chart number.")
        parser.add_argument(
            "--output", "-o", type=Path, help="Write to this file (mode 600) instead of stdout."
        )

    def handle(self, *args, chart_no: str, output: Path | None, **options):
        patient = Patient.objects.filter(chart_no=chart_no).first()
        if patient is None:
            raise CommandError(f"No patient with chart number {chart_no}.")
        # Open the file before exporting, so a bad path fails before the audit log records an
        # export that never reached anyone.
        fd = self._open_private(output) if output else None
        document = patient_export(patient=patient, actor=ACTOR)
        if fd is None:
            self.stdout.write(document)
            return
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(document + "\n")
        self.stderr.write(f"Wrote patient {patient.chart_no} to {output}.")

    @staticmethod
    def _open_private(path: Path) -> int:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise CommandError(f"Can't write {path}: {exc.strerror}.") from exc
        # O_CREAT's mode only applies to a new file; an existing one may be world-readable.
        os.fchmod(fd, 0o600)
        return fd
