"""django-q2 entry points. Thin: each is safe to run twice or at the same time as itself."""

from django.utils import timezone

from campaigns.planner import plan_due_messages
from desk.task_services import tasks_plan_no_channel
from reminders.linking import line_link_failures_forget
from reminders.receipts import webhook_events_forget
from reminders.retention import retention_apply
from reminders.services import messages_dispatch


def plan_task() -> dict[str, int]:
    results = plan_due_messages()
    return {rule.name: result.queued for rule, result in results.items()}


def dispatch_task() -> dict[str, int]:
    return dict(messages_dispatch())


def webhook_cleanup_task() -> int:
    now = timezone.now()
    line_link_failures_forget(now=now)  # wrong LINE link codes count for an hour only
    return webhook_events_forget(now=now)


def retention_task() -> dict[str, int]:
    return dict(retention_apply(now=timezone.now()))


def no_channel_task() -> int:
    return tasks_plan_no_channel(now=timezone.now())
