from django.core.management.base import BaseCommand, CommandError

from clinic_crm import crypto
from clinic_crm.rotation import RotationProgress, encryption_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted field under the first key in FIELD_ENCRYPTION_KEYS. "
        "Safe to interrupt and run again; remove old keys only after a run that finishes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the rows still under an older key; change nothing.",
        )

    def handle(self, *args, batch_size: int, dry_run: bool, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        verb = "under older keys" if dry_run else "re-encrypted"

        def report(step: RotationProgress) -> None:
            self.stdout.write(
                f"{step.model}: {step.scanned}/{step.total} rows, {step.changed} {verb}"
            )

        try:
            count = encryption_rotate(batch_size=batch_size, progress=report, dry_run=dry_run)
        except crypto.DecryptionError as exc:
            raise CommandError(
                f"{exc}. Batches before this row are committed. If its key was removed, put "
                "it back in FIELD_ENCRYPTION_KEYS after the newest one and run again."
            ) from exc
        current = crypto.keyring().current_id
        if dry_run:
            self.stdout.write(f"Total: {count} rows not yet under the newest key ({current}).")
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Total: {count} rows re-encrypted under key {current}.")
            )
