"""Keeps dashboard.MessageDay: the outbox counted per clinic-local day, rule and channel, once
for every message and once per department and doctor of the patient (PatientGroup).

The worker re-counts the last few days every few minutes (a message's status, delivery receipt
and reply arrive after its due day); `manage.py dashboard_refresh --since DATE` re-counts any
span, the whole outbox by default. Today is never summarised: the page counts it live."""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import TruncDate
from django.utils import timezone

from campaigns.sendwindow import day_bounds
from dashboard.models import MessageDay, SummarisedDay
from reminders.models import OutboxMessage


def recent_days() -> int:
    """How many days before today each scheduled refresh re-counts: late delivery receipts,
    replies, appointment outcomes and a recall's booking (within DASHBOARD_RECALL_DAYS of
    sending) land within this; anything later waits for the nightly full re-count."""
    from dashboard.selectors import recall_days

    return int(getattr(settings, "DASHBOARD_SUMMARY_DAYS", recall_days() + 5))


def refresh(first: date, last: date) -> int:
    """Re-count the days `first`..`last` (both included, none from today on); returns how many
    summary rows they now have. Two aggregates over those days' outbox rows (the due_at
    index): every message, then every message under each group of its patient (a patient of
    two doctors counts under both); one delete and one insert, in one transaction: a page
    reads the old counts or the new."""
    last = min(last, timezone.localdate() - timedelta(days=1))
    if last < first:
        return 0
    start_at, end_at = day_bounds(first)[0], day_bounds(last)[1]
    from dashboard.selectors import counted_messages, rules_all  # they read this summary

    now = timezone.now()
    rules = rules_all()
    messages = OutboxMessage.objects.filter(due_at__gte=start_at, due_at__lt=end_at)
    day = {"day": TruncDate("due_at", tzinfo=timezone.get_current_timezone())}
    group = {
        "department": F("patient__dashboard_groups__department"),
        "doctor": F("patient__dashboard_groups__doctor"),
    }
    in_groups = messages.filter(patient__dashboard_groups__isnull=False)  # one join, reused
    counted = counted_messages(messages, rules, day) + counted_messages(
        in_groups, rules, day | group
    )
    rows = [  # days × rules × channels × (groups + 1): tens of thousands at most
        MessageDay(week=row["day"] - timedelta(days=row["day"].weekday()), **row) for row in counted
    ]
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    with transaction.atomic():
        MessageDay.objects.filter(day__gte=first, day__lte=last).delete()
        MessageDay.objects.bulk_create(rows, batch_size=1000)
        SummarisedDay.objects.bulk_create(
            [SummarisedDay(day=day, refreshed_at=now) for day in days],
            update_conflicts=True,
            unique_fields=["day"],
            update_fields=["refreshed_at"],
        )
    return len(rows)


def refresh_recent() -> int:
    """The scheduled refresh: the last recent_days() days before today."""
    today = timezone.localdate()
    return refresh(today - timedelta(days=recent_days()), today - timedelta(days=1))


def refresh_since(first: date | None = None) -> int:
    """Re-count every day from `first` (by default the oldest message's) to yesterday, a month
    at a time so that each transaction stays short."""
    if first is None:
        oldest = OutboxMessage.objects.order_by("due_at").values_list("due_at", flat=True).first()
        if oldest is None:
            return 0
        first = timezone.localtime(oldest).date()
    yesterday = timezone.localdate() - timedelta(days=1)
    total = 0
    while first <= yesterday:
        last = min(first + timedelta(days=30), yesterday)
        total += refresh(first, last)
        first = last + timedelta(days=1)
    return total
