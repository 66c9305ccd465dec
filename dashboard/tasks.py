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


def summary_rebuild_task() -> int:
    """Re-count the whole outbox summary (nightly): changes older than the recent days'
    refresh reaches, such as an appointment's outcome recorded weeks late."""
    from dashboard.summary import refresh_since

    return refresh_since()
