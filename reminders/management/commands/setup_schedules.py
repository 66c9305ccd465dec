from datetime import datetime, time, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone
from django_q.models import Schedule

SCHEDULES = [
    # name, task, every N minutes
    ("plan care rules", "reminders.tasks.plan_task", 5),
    ("dispatch messages", "reminders.tasks.dispatch_task", 1),
    ("forget old webhook events", "reminders.tasks.webhook_cleanup_task", 24 * 60),
    (
        "erase message texts, attempts and skips past retention",
        "reminders.tasks.retention_task",
        24 * 60,
    ),
    # Hourly, not daily: an appointment booked this afternoon for tomorrow still gets its call.
    ("call tasks for patients no channel can remind", "reminders.tasks.no_channel_task", 60),
    # New files in the daily import feed folder (patients/imports/feed.py; off without
    # IMPORT_FEED_DIR); also deletes abandoned uploads of the admin's import page.
    ("import daily feed files", "patients.imports.feed.feed_task", settings.IMPORT_FEED_MINUTES),
    # The dashboard reads its message counts of days before today from this summary
    # (dashboard.summary): re-count the last two weeks, where receipts and replies still land.
    ("count the dashboard's recent messages", "dashboard.tasks.summary_refresh_task", 5),
    ("re-count all the dashboard's messages", "dashboard.tasks.summary_rebuild_task", 24 * 60),
]
# The managers' weekly summary e-mail (it sends only when DASHBOARD_WEEKLY_EMAIL is on, and
# once a week however often it runs): Mondays at this hour in the clinic's zone.
WEEKLY_SUMMARY = ("weekly summary e-mail to managers", "dashboard.tasks.weekly_summary_task")
WEEKLY_AT = time(8, 0)


def next_monday_at(clock: time, now: datetime) -> datetime:
    """The next Monday at `clock` in the clinic's zone, from `now` (today if still ahead)."""
    local = timezone.localtime(now)
    day = local.date() + timedelta(days=(7 - local.weekday()) % 7)
    moment = timezone.make_aware(datetime.combine(day, clock))
    return moment if moment > now else moment + timedelta(days=7)


class Command(BaseCommand):
    help = (
        "Create or update the worker's schedules (planner every 5 minutes, dispatch every 1, "
        "webhook dedupe cleanup and retention daily, call tasks for patients no channel can "
        "remind hourly, the managers' summary e-mail weekly on Monday 08:00)."
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
        name, func = WEEKLY_SUMMARY
        first = next_monday_at(WEEKLY_AT, timezone.now())
        _schedule, created = Schedule.objects.update_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": Schedule.WEEKLY,
                "next_run": first,
                "repeats": -1,
            },
        )
        self.stdout.write(
            f"{'created' if created else 'kept'}: {name} weekly from "
            f"{timezone.localtime(first):%Y-%m-%d %H:%M}"
        )
