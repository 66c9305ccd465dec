"""The weekly summary e-mail to clinic managers: last week in a few figures, the week ahead,
and what needs attention, with a link to the dashboard. Aggregates only: no patient's name,
number or message text is in it.

Sent by the worker on Monday 08:00 in the clinic's zone (reminders/management/commands/
setup_schedules.py) when settings.DASHBOARD_WEEKLY_EMAIL is on, through Django's own e-mail
backend (the clinic's staff mail), not the patients' e-mail channel.

Once a week, whatever runs it: the worker keeps every finished run of a task in django-q2's
task table, and a run that finds a run of its own which already sent this clinic week sends
nothing (no model of ours, no cache that another process can't see).
"""

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import EmailMultiAlternatives, get_connection
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django_q.models import Success

from campaigns.costs import messages_cost
from campaigns.forecast import week_ahead
from campaigns.sendwindow import day_bounds
from clinic_crm.roles import CLINIC_MANAGER
from dashboard import selectors
from dashboard.filters import Filters, Range

log = logging.getLogger(__name__)

TASK = "dashboard.tasks.weekly_summary_task"
LANGUAGE = "zh-hant"  # the managers' language; the e-mail has no per-user language


@dataclass(frozen=True)
class WeekSummary:
    """Last week's figures and the week ahead, all counts over the whole clinic."""

    start: date  # Monday
    end: date  # Sunday
    sent: int
    delivered: int
    failed: int
    confirmation_rate: float | None  # of sent confirmation requests; None when none was sent
    no_show_rate: float | None  # of reminded appointments with an outcome; None when none
    cost: Decimal  # NT$, estimated from segments and the price settings
    ahead_days: list[tuple[date, int]]  # the next 7 days from the summary's day, each day's total
    failed_or_unknown: int
    open_tasks: int
    overdue_tasks: int
    rules_missing_template: int

    @property
    def ahead_total(self) -> int:
        return sum(n for _day, n in self.ahead_days)

    @property
    def confirmation_percent(self) -> float | None:
        return None if self.confirmation_rate is None else 100 * self.confirmation_rate

    @property
    def no_show_percent(self) -> float | None:
        return None if self.no_show_rate is None else 100 * self.no_show_rate

    @property
    def needs_attention(self) -> bool:
        return bool(self.failed_or_unknown or self.overdue_tasks or self.rules_missing_template)


def week_start(day: date) -> date:
    """The Monday of `day`'s week."""
    return day - timedelta(days=day.weekday())


def week_summary(*, now: datetime) -> WeekSummary:
    """The figures for the week before `now`'s (Monday to Sunday, the clinic's zone), from the
    dashboard's own selectors, so that the e-mail and the page agree; and the week ahead from
    `now`. A few aggregate queries plus the forecast's dry run."""
    today = timezone.localdate(now)
    monday = week_start(today) - timedelta(days=7)
    f = Filters(range=Range.CUSTOM, start=monday, end=monday + timedelta(days=6))
    rules = selectors.rules_all()
    funnel = selectors.funnel(f, rules)
    asking = [row for row in funnel if row.rule.asks_confirmation]
    asked, confirmed = sum(r.sent for r in asking), sum(r.confirmed for r in asking)
    outcomes = sum(r.appointments for r in funnel)
    attention = selectors.attention(f, rules, today=today)
    ahead: dict[date, int] = {today + timedelta(days=n): 0 for n in range(7)}
    for row in week_ahead(now=now, days=7):
        ahead[row.day] += row.messages
    return WeekSummary(
        start=f.start,
        end=f.end,
        sent=sum(r.sent for r in funnel),
        delivered=sum(r.delivered for r in funnel),
        failed=sum(r.failed for r in funnel),
        confirmation_rate=confirmed / asked if asked else None,
        no_show_rate=sum(r.no_show for r in funnel) / outcomes if outcomes else None,
        cost=messages_cost(selectors.messages_in(f).filter(sent_at__isnull=False)),
        ahead_days=sorted(ahead.items()),
        failed_or_unknown=attention.failed + attention.unknown,
        open_tasks=attention.open_tasks,
        overdue_tasks=attention.overdue_tasks,
        rules_missing_template=len(attention.rules_missing_template),
    )


def recipients() -> list[str]:
    """The e-mail addresses of active users in the clinic-manager group, each once."""
    users = User.objects.filter(is_active=True, groups__name=CLINIC_MANAGER).exclude(email="")
    return sorted(set(users.values_list("email", flat=True)))


def dashboard_url() -> str:
    """The dashboard's address for staff, at the clinic's public address."""
    base = settings.PUBLIC_BASE_URL
    return f"{base.rstrip('/')}{reverse('dashboard:index')}?range=week"


def sent_this_week(*, now: datetime) -> bool:
    """Whether a finished run of the weekly task already sent the e-mail this clinic week
    (a run that found it off, or nobody to send to, sent nothing and does not count)."""
    monday = day_bounds(week_start(timezone.localdate(now)))[0]
    runs = Success.objects.filter(func=TASK, started__gte=monday).values_list("result", flat=True)
    return any(bool(result) for result in runs)  # a few rows a week at most


def weekly_email_send(*, now: datetime) -> int:
    """E-mail the week's summary to every clinic manager with an address; the number sent to.
    Sends nothing (0) when DASHBOARD_WEEKLY_EMAIL is off, when this week's was already sent,
    or when no manager has an address. Raises what the e-mail backend raises (SMTP errors):
    the worker then records a failed run and the next one tries again."""
    if not settings.DASHBOARD_WEEKLY_EMAIL:
        return 0
    if sent_this_week(now=now):
        log.info("weekly summary: already sent this week")
        return 0
    to = recipients()
    if not to:
        log.warning("weekly summary: no active clinic manager has an e-mail address")
        return 0
    with translation.override(LANGUAGE):
        summary = week_summary(now=now)
        context = {"summary": summary, "url": dashboard_url()}
        subject = _("Weekly summary %(start)s–%(end)s") % {
            "start": summary.start.strftime("%m/%d"),
            "end": summary.end.strftime("%m/%d"),
        }
        text = render_to_string("dashboard/weekly_email.txt", context)
        html = render_to_string("dashboard/weekly_email.html", context)
    # One message per manager: no one sees who else gets it.
    with get_connection() as connection:  # one SMTP session for all of them
        messages = []
        for address in to:
            message = EmailMultiAlternatives(
                subject, text, settings.DEFAULT_FROM_EMAIL, [address], connection=connection
            )
            message.attach_alternative(html, "text/html")
            messages.append(message)
        connection.send_messages(messages)
    log.info("weekly summary: sent to %d managers", len(to))
    return len(to)
