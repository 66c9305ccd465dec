"""The dashboard's tables, built once from the selectors' results: the page shows them and the
CSV/XLSX exports write the very same rows, so what is downloaded is what is on the screen.

The cells are aggregates (counts and rates per rule, week, channel): no patient is named in
any of them, so an export is not patient data and is not audited (unlike the admin's lists)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from campaigns.models import SkipReason
from consent.models import Channel, Purpose
from dashboard import selectors
from dashboard.filters import Filters
from dashboard.stats import Effect

Cell = str | int | Decimal  # as clinic_crm.exports writes them


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]]


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _skips_in_words(skipped: dict[str, int]) -> str:
    labels = dict(SkipReason.choices)
    return "、".join(
        f"{labels.get(reason, reason)} {n}"
        for reason, n in sorted(skipped.items(), key=lambda item: -item[1])
    )


def _outcome_in_words(row: selectors.FunnelRow) -> str:
    kind = row.rule.kind
    if kind in selectors.APPOINTMENT_KINDS:
        return _("attended %(a)d, no-show %(b)d") % {"a": row.attended, "b": row.no_show}
    if kind in selectors.RECALL_KINDS:
        return _("%(a)d of %(b)d booked within %(days)d days") % {
            "a": row.booked,
            "b": row.recalled,
            "days": selectors.recall_days(),
        }
    if kind in selectors.REFILL_KINDS:
        return _("%(a)d of %(b)d refills picked up") % {"a": row.picked_up, "b": row.refills}
    return "—"


def funnel_table(rows: list[selectors.FunnelRow]) -> Table:
    header = [
        _("Rule"),
        pgettext("dashboard", "Due"),
        _("Queued"),
        _("Skipped"),
        _("Skipped, by reason"),
        _("Sent"),
        _("Delivered"),
        _("Failed"),
        _("Dropped"),
        _("Outcome unknown"),
        _("Still waiting"),
        _("Replied"),
        _("Confirmed by the patient"),
        pgettext("dashboard", "Outcome"),
        _("Outcome rate"),
    ]
    body: list[list[Cell]] = []
    for row in rows:
        outcome = row.outcome
        body.append(
            [
                row.rule.name,
                row.due,
                row.queued,
                row.skipped_total,
                _skips_in_words(row.skipped),
                row.sent,
                row.delivered,
                row.failed,
                row.dropped,
                row.unknown,
                row.waiting,
                row.replied,
                row.confirmed,
                _outcome_in_words(row),
                percent(*outcome) if outcome else "—",
            ]
        )
    return Table("funnel", _("Funnel per rule"), header, body)


def _effect_words(effect: Effect | None, comparison: str) -> list[Cell]:
    if effect is None:
        return ["—", "—", "—", "—", _("No comparison: no holdout and no switch-on time")]
    with_group = f"{effect.with_events} / {effect.with_total}"
    without = f"{effect.without_events} / {effect.without_total}"
    if not effect.enough:
        return [with_group, without, _("Not enough data yet"), "—", _comparison(comparison)]
    if effect.rr is None:
        return [with_group, without, "—", "—", _comparison(comparison)]
    interval = f"{effect.low:.2f} – {effect.high:.2f}"
    return [with_group, without, f"{effect.rr:.2f}", interval, _comparison(comparison)]


def _comparison(comparison: str) -> str:
    if comparison == "holdout":
        return _("held-out patients (no message)")
    return _("the same length of time before the rule was switched on")


def effect_table(rows: list[selectors.EffectRow]) -> Table:
    header = [
        _("Rule"),
        _("With the message"),
        _("Rate with"),
        _("Without"),
        _("Rate without"),
        _("Relative risk"),
        _("95% confidence interval"),
        _("Compared with"),
    ]
    body: list[list[Cell]] = []
    for row in rows:
        words = _effect_words(row.effect, row.comparison)
        effect = row.effect
        with_rate = _rate(effect.with_rate) if effect else "—"
        without_rate = _rate(effect.without_rate) if effect else "—"
        body.append(
            [row.rule.name, words[0], with_rate, words[1], without_rate, words[2], words[3]]
            + [words[4]]
        )
    return Table("effect", _("Effect: with vs without the message"), header, body)


def _week_label(week: date) -> str:
    return week.strftime("%m/%d")


def weekly_table(trends: selectors.Trends) -> Table:
    weeks = sorted({w.week for w in trends.no_show} | {w.week for w in trends.confirmed})
    no_show = {w.week: w for w in trends.no_show}
    confirmed = {w.week: w for w in trends.confirmed}
    header = [
        _("Week of"),
        _("Appointments with an outcome"),
        _("No-shows"),
        _("No-show rate"),
        _("Appointments booked"),
        _("Confirmed"),
        _("Confirmation rate"),
    ]
    body: list[list[Cell]] = []
    for week in weeks:
        ns, cf = no_show.get(week), confirmed.get(week)
        body.append(
            [
                week.isoformat(),
                ns.whole if ns else 0,
                ns.part if ns else 0,
                _rate(ns.rate if ns else None),
                cf.whole if cf else 0,
                cf.part if cf else 0,
                _rate(cf.rate if cf else None),
            ]
        )
    return Table("weekly", _("Weekly no-shows and confirmations"), header, body)


def delivery_table(trends: selectors.Trends) -> Table:
    labels = dict(Channel.choices)
    header = [_("Channel"), _("Week of"), _("Handed to the provider"), _("Delivered"), _("Rate")]
    body: list[list[Cell]] = [
        [str(labels.get(channel, channel)), w.week.isoformat(), w.whole, w.part, _rate(w.rate)]
        for channel, weeks in trends.delivery.items()
        for w in weeks
    ]
    return Table("delivery", _("Delivery rate per channel"), header, body)


def opt_out_table(trends: selectors.Trends) -> Table:
    purposes, channels = dict(Purpose.choices), dict(Channel.choices)
    header = [_("Purpose"), _("Channel"), _("Withdrawals"), _("Patients with consent"), _("Rate")]
    body: list[list[Cell]] = [
        [
            str(purposes.get(p, p)),
            str(channels.get(c, c)),
            out,
            now + out,
            percent(out, now + out),
        ]
        for p, c, out, now in trends.opt_out
    ]
    return Table("opt_out", _("Opt-outs per channel and purpose"), header, body)


def _mean(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def rating_tables(f: Filters) -> tuple[Table, Table]:
    """How was your visit?: per department and doctor, and per week and department."""
    by_doctor, by_week = selectors.visit_ratings(f)
    doctors = Table(
        "ratings",
        _("Visit ratings per department and doctor"),
        [_("Department"), _("Doctor"), _("Ratings"), _("Average (1-5)")],
        [[r.department, r.doctor, r.count, _mean(r.average)] for r in by_doctor],
    )
    weeks = Table(
        "ratings_weekly",
        _("Visit ratings per week and department"),
        [_("Week of"), _("Department"), _("Ratings"), _("Average (1-5)")],
        [
            [r.week.isoformat() if r.week else "", r.department, r.count, _mean(r.average)]
            for r in by_week
        ],
    )
    return doctors, weeks


def cost_table(costs: selectors.Costs) -> Table:
    header = [
        _("Rule"),
        _("SMS messages"),
        _("SMS segments"),
        _("SMS segments, projected to month end"),
        _("Estimated SMS cost (NT$)"),
        _("SMS cost, projected to month end (NT$)"),
        _("LINE messages"),
        _("LINE, projected to month end"),
        _("E-mails"),
    ]
    body: list[list[Cell]] = [
        [
            row.rule.name,
            row.sms,
            row.segments,
            costs.projected(row.segments),
            row.sms_cost.quantize(Decimal("0.01")),
            costs.projected_cost(row.sms_cost),
            row.line,
            costs.projected(row.line),
            row.email,
        ]
        for row in costs.rows
    ]
    total = costs.totals
    if total:
        body.append(
            [
                _("Total"),
                total.sms,
                total.segments,
                costs.projected(total.segments),
                total.sms_cost.quantize(Decimal("0.01")),
                costs.projected_cost(total.sms_cost),
                total.line,
                costs.projected(total.line),
                total.email,
            ]
        )
    return Table("cost", _("Cost and quota this month"), header, body)


# Which selectors each table needs: an export runs only those.
BUILDERS: dict[str, Callable[[Filters], Table]] = {}


def _funnel_rows(f: Filters) -> list[selectors.FunnelRow]:
    return selectors.funnel(f, selectors.rules_all())


BUILDERS["funnel"] = lambda f: funnel_table(_funnel_rows(f))
BUILDERS["effect"] = lambda f: effect_table(selectors.effects(f, _funnel_rows(f)))
BUILDERS["weekly"] = lambda f: weekly_table(selectors.trends(f))
BUILDERS["delivery"] = lambda f: delivery_table(selectors.trends(f))
BUILDERS["opt_out"] = lambda f: opt_out_table(selectors.trends(f))
BUILDERS["cost"] = lambda f: cost_table(selectors.costs(f, selectors.rules_all()))
BUILDERS["ratings"] = lambda f: rating_tables(f)[0]
BUILDERS["ratings_weekly"] = lambda f: rating_tables(f)[1]
