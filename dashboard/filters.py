"""The dashboard's filters, parsed once from the GET parameters: one date range in the clinic's
zone and the rule, channel, department and doctor every section narrows to."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.http import QueryDict
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from campaigns.sendwindow import day_bounds
from consent.models import Channel

# A custom range longer than this is cut: the page's aggregates are sized for a quarter or so.
MAX_DAYS = 400


class Range(enum.StrEnum):
    WEEK = "week"
    DAYS_30 = "30d"
    QUARTER = "quarter"
    CUSTOM = "custom"

    @property
    def label(self) -> str:
        return str(RANGE_LABELS[self])


RANGE_LABELS = {
    Range.WEEK: _("This week"),
    Range.DAYS_30: _("Last 30 days"),
    Range.QUARTER: _("Last quarter"),
    Range.CUSTOM: _("Custom"),
}


@dataclass(frozen=True)
class Filters:
    """What the manager chose. `start` and `end` are days in the clinic's zone, both included."""

    range: Range
    start: date
    end: date
    rule_id: int | None = None
    channel: str = ""
    department: str = ""
    doctor: str = ""

    @property
    def start_at(self) -> datetime:
        return day_bounds(self.start)[0]

    @property
    def end_at(self) -> datetime:
        """The first moment after the range (exclusive bound)."""
        return day_bounds(self.end)[1]

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def query(self, **changes: str) -> str:
        """These filters as a query string (for export links), with `changes` applied."""
        params = QueryDict(mutable=True)
        params["range"] = self.range.value
        if self.range is Range.CUSTOM:
            params["start"], params["end"] = self.start.isoformat(), self.end.isoformat()
        for key, value in (
            ("rule", str(self.rule_id or "")),
            ("channel", self.channel),
            ("department", self.department),
            ("doctor", self.doctor),
        ):
            if value:
                params[key] = value
        for key, value in changes.items():
            params[key] = value
        return params.urlencode()


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text or "")
    except ValueError:
        return None


def filters_parse(params: QueryDict, *, today: date | None = None) -> Filters:
    """The filters in `params`; anything malformed falls back to its default (last 30 days,
    everything) rather than failing, since the values come from a bookmarked URL."""
    today = today or timezone.localdate()
    try:
        chosen = Range(params.get("range", Range.DAYS_30))
    except ValueError:
        chosen = Range.DAYS_30
    start, end = today - timedelta(days=29), today
    if chosen is Range.WEEK:
        start = today - timedelta(days=today.weekday())  # Monday, as TruncWeek counts
    elif chosen is Range.QUARTER:
        # The last full calendar quarter: a report the manager can compare quarter to quarter.
        this_quarter = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
        end = this_quarter - timedelta(days=1)
        start = date(end.year, 3 * ((end.month - 1) // 3) + 1, 1)
    elif chosen is Range.CUSTOM:
        custom_start, custom_end = _day(params.get("start")), _day(params.get("end"))
        if custom_start and custom_end:
            start, end = sorted((custom_start, custom_end))
            start = max(start, end - timedelta(days=MAX_DAYS - 1))
        else:
            chosen = Range.DAYS_30
    rule = params.get("rule", "")
    channel = params.get("channel", "")
    return Filters(
        range=chosen,
        start=start,
        end=end,
        rule_id=int(rule) if rule.isdigit() else None,
        channel=channel if channel in Channel.values else "",
        department=params.get("department", "").strip()[:40],
        doctor=params.get("doctor", "").strip()[:60],
    )
