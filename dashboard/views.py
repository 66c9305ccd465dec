"""The clinic manager's campaign dashboard. Thin: parse the filters, call the selectors, render
(or export one table)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import pgettext
from django.views.decorators.http import require_GET

from clinic_crm.exports import ExportFormat, table_response
from clinic_crm.roles import CLINIC_MANAGER
from consent.models import Channel
from dashboard import charts, forecast, selectors, tables
from dashboard.filters import RANGE_LABELS, Filters, filters_parse

LOGIN_URL = reverse_lazy("admin:login")


def may_see_dashboard(user: AbstractBaseUser | AnonymousUser) -> bool:
    """The clinic manager (and a superuser) may; the front desk may not."""
    if not isinstance(user, User) or not user.is_active:
        return False
    return user.is_superuser or user.groups.filter(name=CLINIC_MANAGER).exists()


def manager_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Login first (to the admin's login page), then the manager's group or the zh-Hant 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not may_see_dashboard(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(wrapped, login_url=LOGIN_URL)


def _week_axis(weeks: list[Any]) -> list[str]:
    return [week.strftime("%m/%d") for week in weeks]


def _charts(trends: selectors.Trends) -> dict[str, str]:
    weeks = sorted({w.week for w in trends.no_show} | {w.week for w in trends.confirmed})
    no_show = {w.week: w.rate for w in trends.no_show}
    confirmed = {w.week: w.rate for w in trends.confirmed}
    rates = charts.line_chart(
        _("No-show and confirmation rate per week"),
        _week_axis(weeks),
        [
            charts.Series(_("No-show rate"), [no_show.get(w) for w in weeks]),
            charts.Series(_("Confirmation rate"), [confirmed.get(w) for w in weeks]),
        ],
    )
    delivery_weeks = sorted({w.week for rows in trends.delivery.values() for w in rows})
    labels = dict(Channel.choices)
    delivery = charts.bar_chart(
        _("Delivery rate per channel and week"),
        _week_axis(delivery_weeks),
        [
            charts.Series(
                str(labels.get(channel, channel)),
                [{w.week: w.rate for w in rows}.get(week) for week in delivery_weeks],
            )
            for channel, rows in trends.delivery.items()
        ],
        unit="%",
    )
    return {"rates": rates, "delivery": delivery}


def _funnel_chart(rows: list[selectors.FunnelRow]) -> str:
    named = [row for row in rows if row.due]
    return charts.bar_chart(
        _("Due, sent and delivered per rule"),
        [row.rule.name for row in named],
        [
            charts.Series(pgettext("dashboard", "Due"), [row.due for row in named]),
            charts.Series(_("Sent"), [row.sent for row in named]),
            charts.Series(_("Delivered"), [row.delivered for row in named]),
        ],
    )


@dataclass(frozen=True)
class Link:
    label: str
    count: int
    url: str
    detail: str = ""


def _admin_list(name: str, **params: str) -> str:
    return f"{reverse(f'admin:{name}_changelist')}?{urlencode(params)}"


def attention_links(f: Filters, found: selectors.Attention) -> list[Link]:
    """Each thing that needs attention as a link into the admin's list, filtered to it."""
    narrow = {}
    if f.rule_id:
        narrow["rule__id__exact"] = str(f.rule_id)
    if f.channel:
        narrow["channel__exact"] = f.channel
    in_range = {"due_at__gte": f.start_at.isoformat(), "due_at__lt": f.end_at.isoformat()}
    messages, tasks = "reminders_outboxmessage", "reminders_stafftask"
    today = timezone.localdate().isoformat()
    links = [
        Link(
            _("Failed messages in the period"),
            found.failed,
            _admin_list(messages, status__exact="failed", **in_range, **narrow),
        ),
        Link(
            _("Messages whose outcome is unknown"),
            found.unknown,
            _admin_list(messages, status__exact="unknown", **in_range, **narrow),
        ),
        Link(_("Open staff tasks"), found.open_tasks, _admin_list(tasks, state="open")),
        Link(
            _("Overdue staff tasks"),
            found.overdue_tasks,
            _admin_list(tasks, state="open", until__lt=today),
        ),
        Link(
            _("Upcoming appointments no channel can remind"),
            found.no_channel,
            _admin_list(tasks, state="open", kind__exact="call_no_channel"),
        ),
        Link(
            _("Daily import files refused or failed in the period"),
            found.failed_imports,
            _admin_list(
                "patients_importrun",
                origin__exact="feed",
                status__in="failed,rejected",
                queued_at__gte=f.start_at.isoformat(),
                queued_at__lt=f.end_at.isoformat(),
            ),
        ),
    ]
    labels = dict(Channel.choices)
    if found.rules_missing_template:
        ids = ",".join(str(rule.pk) for rule, _missing in found.rules_missing_template)
        detail = "；".join(
            f"{rule.name}：{'、'.join(str(labels.get(c, c)) for c in missing)}"
            for rule, missing in found.rules_missing_template
        )
        links.append(
            Link(
                _("Enabled rules without a template for a channel they list"),
                len(found.rules_missing_template),
                _admin_list("campaigns_rule", id__in=ids),
                detail,
            )
        )
    else:
        links.append(
            Link(
                _("Enabled rules without a template for a channel they list"),
                0,
                _admin_list("campaigns_rule", enabled__exact="1"),
            )
        )
    near_ids = ",".join(str(rule.pk) for rule, _n in found.rules_near_cap) or "0"
    links.append(
        Link(
            _("Rules with an SMS template near the segment limit"),
            len(found.rules_near_cap),
            _admin_list("campaigns_rule", id__in=near_ids),
            "；".join(
                _("%(rule)s: %(n)d segments") % {"rule": rule.name, "n": n}
                for rule, n in found.rules_near_cap
            ),
        )
    )
    return links


@require_GET
@manager_required
def index(request: HttpRequest) -> HttpResponse:
    """The dashboard: funnel, effect, trends, cost, the week ahead and what needs attention,
    for the filters in the query string."""
    f = filters_parse(request.GET)
    with selectors.reads_without_jit():
        context = _page(f)
    return render(request, "dashboard/index.html", context)


def _page(f: Filters) -> dict[str, Any]:
    rules = selectors.rules_all()
    steps = selectors.message_steps(f, rules)  # the summary, or one count of the outbox
    funnel = selectors.funnel(f, rules, steps=steps)
    trends = selectors.trends(f, steps=steps)
    costs = selectors.costs(f, rules)
    departments, doctors = selectors.departments_and_doctors()
    ratings, ratings_weekly = tables.rating_tables(f)
    return {
        "f": f,
        "ranges": RANGE_LABELS.items(),
        "rules": rules,
        "channels": Channel.choices,
        "departments": departments,
        "doctors": doctors,
        "funnel": tables.funnel_table(funnel),
        "funnel_chart": _funnel_chart(funnel),
        "effect": tables.effect_table(selectors.effects(f, funnel)),
        "weekly": tables.weekly_table(trends),
        "delivery": tables.delivery_table(trends),
        "opt_out": tables.opt_out_table(trends),
        "ratings": ratings,
        "ratings_weekly": ratings_weekly,
        "charts": _charts(trends),
        "costs": costs,
        "cost": tables.cost_table(costs),
        "cost_totals": costs.totals,
        "line_projected": costs.projected(costs.line_account),
        "attention": attention_links(f, selectors.attention(f, rules, funnel_rows=funnel)),
        "sms_cap": settings.SMS_MAX_SEGMENTS,
        "now": timezone.localtime(),
        "summary_as_of": selectors.summary_as_of(f),
        "today": timezone.localdate(),
        "min_group": selectors.min_group(),
        "recall_days": selectors.recall_days(),
        "query": f.query(),
    }


@require_GET
@manager_required
def export(request: HttpRequest, table: str, fmt: str) -> StreamingHttpResponse | FileResponse:
    """One of the page's tables as CSV or XLSX, for the same filters. Aggregates only (counts
    and rates per rule, week or channel, no patient): not audited as patient data."""
    builder = tables.BUILDERS.get(table)
    if builder is None:
        raise Http404(table)
    try:
        chosen = ExportFormat(fmt)
    except ValueError:
        raise Http404(fmt) from None
    f: Filters = filters_parse(request.GET)
    with selectors.reads_without_jit():
        built = builder(f)
    stamp = f"{f.start:%Y%m%d}-{f.end:%Y%m%d}"
    return table_response(
        title=built.title,
        header=built.header,
        rows=built.rows,
        fmt=chosen,
        filename=f"{built.title}-{stamp}.{chosen.value}",
    )


@require_GET
@manager_required
def week_ahead(request: HttpRequest) -> HttpResponse:
    """Section 5, loaded after the page: the planner's dry run takes seconds, the rest of the
    dashboard well under one."""
    f = filters_parse(request.GET)
    return render(
        request, "dashboard/week_ahead.html", {"week_ahead": forecast.week_ahead_section(f)}
    )
