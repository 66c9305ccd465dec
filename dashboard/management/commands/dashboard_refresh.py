from datetime import date

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dashboard.summary import refresh_since


class Command(BaseCommand):
    help = (
        "Re-count the dashboard's outbox summary (dashboard.MessageDay) from --since "
        "(YYYY-MM-DD; by default the oldest message's day) to yesterday."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--since", help="first day to re-count, YYYY-MM-DD")

    def handle(self, *args: object, **options: object) -> None:
        since = options.get("since")
        first = None
        if since:
            try:
                first = date.fromisoformat(str(since))
            except ValueError:
                raise CommandError(f"--since: not a date: {since}") from None
        rows = refresh_since(first)
        self.stdout.write(f"summary rows written: {rows} (up to {timezone.localdate()}, excluded)")
