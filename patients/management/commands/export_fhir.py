import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from patients.fhir import patient_export_fhir
from patients.management.commands.export_patient import Command as ExportPatient
from patients.models import Patient

# No staff account runs a management command; the audit log names the command instead.
ACTOR = "manage.py export_fhir"


class Command(BaseCommand):
    help = (
        "Write one patient as a FHIR R4 Bundle (the patient-rights export in a form another "
        "system reads); export_patient writes everything held, as our own JSON."
    )

    def add_arguments(self, parser):
        parser.add_argument("chart_no", help="The patient's chart number.")
        parser.add_argument(
            "--output", "-o", type=Path, help="Write to this file (mode 600) instead of stdout."
        )

    def handle(self, *args, chart_no: str, output: Path | None, **options):
        patient = Patient.objects.filter(chart_no=chart_no).first()
        if patient is None:
            raise CommandError(f"No patient with chart number {chart_no}.")
        # The same private file as export_patient, opened before the audited export.
        fd = ExportPatient._open_private(output) if output else None
        document = patient_export_fhir(patient=patient, actor=ACTOR, now=timezone.now())
        if fd is None:
            self.stdout.write(document)
            return
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(document + "\n")
        self.stderr.write(f"Wrote patient {patient.chart_no} to {output}.")
