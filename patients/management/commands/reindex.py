from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from clinic_crm.rotation import ReindexError, RotationProgress, blind_index_rebuild


class Command(BaseCommand):
    help = (
        "Rebuild every blind index (the keyed search columns) under BLIND_INDEX_KEY. Run it "
        "after changing BLIND_INDEX_KEY with the old key in BLIND_INDEX_KEY_PREVIOUS; safe to "
        "interrupt and run again; remove BLIND_INDEX_KEY_PREVIOUS only after a run that finishes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the rows not yet indexed under BLIND_INDEX_KEY; change nothing.",
        )

    def handle(self, *args, batch_size: int, dry_run: bool, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        verb = "to re-index" if dry_run else "re-indexed"

        def report(step: RotationProgress) -> None:
            self.stdout.write(
                f"{step.model}: {step.scanned}/{step.total} rows, {step.changed} {verb}"
            )

        try:
            count = blind_index_rebuild(batch_size=batch_size, progress=report, dry_run=dry_run)
        except ReindexError as exc:
            raise CommandError(f"{exc}. Batches before this row are committed.") from exc
        if dry_run:
            self.stdout.write(f"Total: {count} rows not yet indexed under BLIND_INDEX_KEY.")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Total: {count} rows re-indexed; BLIND_INDEX_KEY is now the key on record."
            )
        )
        if getattr(settings, "BLIND_INDEX_KEY_PREVIOUS", ""):
            self.stdout.write(
                "Now remove BLIND_INDEX_KEY_PREVIOUS from the environment and restart every "
                "process (web and worker)."
            )
