from django.core.management.base import BaseCommand

from reminders.services import messages_dispatch


class Command(BaseCommand):
    help = "Send the messages that are due now (what the worker does every minute)."

    def add_arguments(self, parser):
        parser.add_argument("--seconds", type=float, default=50.0, help="stop after this long")

    def handle(self, *args, seconds: float, **options):
        results = messages_dispatch(time_budget=seconds)
        summary = ", ".join(f"{what}: {n}" for what, n in sorted(results.items())) or "nothing due"
        self.stdout.write(summary)
