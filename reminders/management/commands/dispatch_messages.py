from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from reminders.services import messages_dispatch


class Command(BaseCommand):
    help = "Send the messages that are due now (what the worker does every minute)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=50.0, help="stop after this long")

    def handle(self, *args: Any, seconds: float, **options: Any) -> None:
        results = messages_dispatch(time_budget=seconds)
        summary = ", ".join(f"{what}: {n}" for what, n in sorted(results.items())) or "nothing due"
        self.stdout.write(summary)
