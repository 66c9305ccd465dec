"""django-q2 entry points of the dashboard. Thin, and safe to run twice (see dashboard.weekly)."""

from django.utils import timezone

from dashboard.weekly import weekly_email_send


def weekly_summary_task() -> int:
    """The weekly summary e-mail to managers; how many it went to (0: off or already sent)."""
    return weekly_email_send(now=timezone.now())


def summary_refresh_task() -> int:
    """Re-count the dashboard's outbox summary for the last few days (dashboard.summary)."""
    from dashboard.summary import refresh_recent

    return refresh_recent()
