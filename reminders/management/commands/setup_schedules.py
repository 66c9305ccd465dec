from django.core.management.base import BaseCommand
from django_q.models import Schedule

SCHEDULES = [
    # name, task, every N minutes
    ("plan care rules", "reminders.tasks.plan_task", 5),
    ("dispatch messages", "reminders.tasks.dispatch_task", 1),
    ("forget old webhook events", "reminders.tasks.webhook_cleanup_task", 24 * 60),
    # Hourly, not daily: an appointment booked this afternoon for tomorrow still gets its call.
    ("call tasks for patients no channel can remind", "reminders.tasks.no_channel_task", 60),
]


class Command(BaseCommand):
    help = (
        "Create or update the worker's schedules (planner every 5 minutes, dispatch every 1, "
        "webhook dedupe cleanup daily, call tasks for patients no channel can remind hourly)."
    )

    def handle(self, *args: object, **options: object) -> None:
        for name, func, minutes in SCHEDULES:
            _schedule, created = Schedule.objects.update_or_create(
                name=name,
                defaults={
                    "func": func,
                    "schedule_type": Schedule.MINUTES,
                    "minutes": minutes,
                    "repeats": -1,
                },
            )
            self.stdout.write(f"{'created' if created else 'kept'}: {name} every {minutes} min")
