"""The numbers beside "Tasks" and "Inbox" in the desk's menu."""

from django import template
from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from desk.task_services import tasks_open_count
from reminders.inbox import inbox_unread_count

register = template.Library()


@register.simple_tag
def open_task_count(user: User | AnonymousUser) -> int | None:
    """Open tasks due by today, for a user who may see tasks; None for anyone else. One
    COUNT on the open-task index."""
    if not user.has_perm("reminders.view_stafftask"):
        return None
    return tasks_open_count(today=timezone.localdate())


@register.simple_tag
def inbox_unread(user: User | AnonymousUser) -> int | None:
    """Unread messages in the inbox, for a user who may read it; None for anyone else. One
    COUNT."""
    if not user.has_perm("reminders.view_inboundmessage"):
        return None
    return inbox_unread_count()
