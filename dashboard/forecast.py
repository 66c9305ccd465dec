"""The week ahead (section 5): how many messages each rule will send per day for the next
7 days, from campaigns/forecast.py's dry run of the planner (engineer D's module). This is the
one place the dashboard calls it: until that module exists the section says "not available"
instead of pretending; once it exists, an error in it is raised, not hidden."""

from __future__ import annotations

import importlib
import importlib.util
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from django.utils import timezone
from django.utils.translation import gettext as _

from dashboard import charts
from dashboard.filters import Filters


@dataclass(frozen=True)
class WeekAhead:
    days: list[date]
    rows: list[tuple[str, list[int]]]  # rule name, messages per day
    chart: str


def week_ahead_section(f: Filters) -> WeekAhead | None:
    """The forecast for the filters' rule, channel, department and doctor; None while
    campaigns.forecast does not exist yet."""
    if importlib.util.find_spec("campaigns.forecast") is None:
        return None
    from campaigns.models import Rule

    module = importlib.import_module("campaigns.forecast")
    now = timezone.now()
    rows = module.week_ahead(
        now=now,
        days=7,
        rule_ids=[f.rule_id] if f.rule_id else None,
        channel=f.channel or None,
        department=f.department or None,
        doctor=f.doctor or None,
    )
    today = timezone.localdate()
    days = sorted({today + timedelta(days=n) for n in range(7)} | {row.day for row in rows})
    per_rule: dict[int, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:  # one row per rule, day and channel: at most a few hundred
        per_rule[row.rule_id][row.day] += row.messages
    names = dict(Rule.objects.filter(pk__in=per_rule).values_list("pk", "name"))
    table = [
        (names.get(rid, str(rid)), [counts[d] for d in days]) for rid, counts in per_rule.items()
    ]
    totals = [sum(counts[d] for counts in per_rule.values()) for d in days]
    chart = charts.bar_chart(
        _("Messages planned per day"),
        [d.strftime("%m/%d") for d in days],
        [charts.Series(_("Messages"), totals)],
    )
    return WeekAhead(days=days, rows=table, chart=chart)
