import time
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from campaigns.planner import plan_due_messages


class Command(BaseCommand):
    help = "Plan every enabled care rule now (or --at a moment); print what was queued or skipped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--at", help="ISO date-time to plan for, e.g. 2026-11-24T08:00")
        parser.add_argument("--dry-run", action="store_true", help="count only, write nothing")

    def handle(self, *args: Any, at: str | None, dry_run: bool, **options: Any) -> None:
        now = timezone.now()
        if at:
            try:
                now = datetime.fromisoformat(at)
            except ValueError as exc:
                raise CommandError(f"--at: {exc}") from exc
            if timezone.is_naive(now):
                now = timezone.make_aware(now)
        started = time.perf_counter()
        results = plan_due_messages(now=now, dry_run=dry_run)
        seconds = time.perf_counter() - started
        verb = "would queue" if dry_run else "queued"
        for rule, result in results.items():
            skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(result.skipped.items()))
            self.stdout.write(f"{rule.name}: {verb} {result.queued}; skipped: {skipped or 'none'}")
        total = sum(r.queued for r in results.values())
        self.stdout.write(f"{len(results)} rules, {total} messages {verb} in {seconds:.2f} s")
