"""Every figure on the dashboard against the small clinic counted by hand in conftest.py."""

import pytest
from django.http import QueryDict
from django.urls import reverse

from campaigns.models import SkipReason
from dashboard import selectors
from dashboard.filters import filters_parse
from patients.models import ImportRun
from tests.dashboard.conftest import NOW, RANGE, at

pytestmark = pytest.mark.django_db


def parsed(**extra):
    params = QueryDict(mutable=True)
    params.update({**RANGE, **extra})
    return filters_parse(params, today=NOW.date())


def funnel_of(small_clinic, **extra):
    rows = selectors.funnel(parsed(**extra), selectors.rules_all())
    return {row.rule.pk: row for row in rows}


def test_funnel_counts_each_step_of_the_return_visit_rule(small_clinic):
    row = funnel_of(small_clinic)[small_clinic.visit_rule.pk]

    assert row.skipped == {SkipReason.HOLDOUT: 2, SkipReason.NO_CONSENT: 1}
    assert (row.due, row.queued, row.skipped_total) == (9, 6, 3)
    assert (row.sent, row.delivered, row.failed, row.dropped, row.unknown) == (2, 1, 1, 1, 1)
    assert (row.waiting, row.replied, row.confirmed) == (1, 1, 1)
    assert (row.appointments, row.attended, row.no_show) == (2, 1, 1)
    assert row.outcome == (1, 2)


def test_funnel_outcomes_of_recall_and_refill(small_clinic):
    rows = funnel_of(small_clinic)
    recall, refill = rows[small_clinic.recall_rule.pk], rows[small_clinic.refill_rule.pk]

    assert (recall.recalled, recall.booked) == (2, 1)  # May is beyond the 30 days
    assert (refill.refills, refill.picked_up) == (2, 1)


def test_recall_window_is_a_setting(small_clinic, settings):
    settings.DASHBOARD_RECALL_DAYS = 90  # 2 March + 90 days reaches May

    recall = funnel_of(small_clinic)[small_clinic.recall_rule.pk]

    assert recall.booked == 2


def test_department_filter_keeps_that_departments_patients(small_clinic):
    row = funnel_of(small_clinic, department="家醫科")[small_clinic.visit_rule.pk]

    assert (row.queued, row.skipped_total, row.sent) == (3, 0, 2)


def test_channel_filter_narrows_messages_and_drops_skips_of_rules_without_it(small_clinic):
    rows = funnel_of(small_clinic, channel="line")

    assert rows[small_clinic.visit_rule.pk].queued == 2  # m2 failed, m5 dropped
    assert rows[small_clinic.visit_rule.pk].skipped_total == 3  # the rule lists LINE
    assert rows[small_clinic.recall_rule.pk].due == 0  # SMS only


def test_rule_filter_shows_only_that_rule(small_clinic):
    rows = funnel_of(small_clinic, rule=str(small_clinic.refill_rule.pk))

    assert list(rows) == [small_clinic.refill_rule.pk]


def test_date_range_leaves_out_what_falls_outside(small_clinic):
    row = funnel_of(small_clinic, start="2026-02-01", end="2026-02-28")[small_clinic.visit_rule.pk]

    assert (row.queued, row.delivered, row.skipped_total) == (1, 1, 1)


def test_effect_holdout_and_before_comparisons(small_clinic, settings):
    settings.DASHBOARD_MIN_GROUP = 2
    f = parsed()
    effects = {
        e.rule.pk: e for e in selectors.effects(f, selectors.funnel(f, selectors.rules_all()))
    }

    visit = effects[small_clinic.visit_rule.pk]
    assert visit.comparison == "holdout"
    assert (visit.effect.with_events, visit.effect.with_total) == (1, 2)
    assert (visit.effect.without_events, visit.effect.without_total) == (1, 2)
    assert visit.effect.rr == pytest.approx(1.0)

    refill = effects[small_clinic.refill_rule.pk]
    assert refill.comparison == "before"
    assert (refill.effect.without_events, refill.effect.without_total) == (1, 3)
    assert refill.effect.rr == pytest.approx(1.5)

    recall = effects[small_clinic.recall_rule.pk]
    assert recall.comparison == "" and recall.effect is None


def test_effect_below_the_minimum_says_not_enough_data(small_clinic, client, manager_user):
    client.force_login(manager_user)

    page = client.get(reverse("dashboard:index"), RANGE).content.decode()

    assert "尚無足夠資料" in page


def test_weekly_trends(small_clinic):
    trends = selectors.trends(parsed())

    [week] = trends.no_show
    assert (week.week.isoformat(), week.part, week.whole) == ("2026-03-02", 2, 5)
    [confirmed] = trends.confirmed
    assert (confirmed.part, confirmed.whole) == (1, 5)
    sms, line = trends.delivery["sms"], trends.delivery["line"]
    assert [(w.part, w.whole) for w in sms] == [(1, 5)]
    assert [(w.part, w.whole) for w in line] == [(1, 3)]


def test_opt_out_rate(small_clinic):
    trends = selectors.trends(parsed())

    assert trends.opt_out == [("care", "sms", 1, 1)]  # 1 withdrawal, 1 still consenting


def test_costs_this_month_and_projection(small_clinic):
    costs = selectors.costs(parsed(), selectors.rules_all(), today=NOW.date())

    by_rule = {row.rule.pk: row for row in costs.rows}
    visit = by_rule[small_clinic.visit_rule.pk]
    assert (visit.sms, visit.segments, visit.line) == (2, 3, 0)
    total = costs.totals
    assert (total.sms, total.segments, total.line, total.email) == (4, 5, 2, 0)
    assert (costs.days_so_far, costs.days_in_month) == (10, 31)
    assert costs.projected(total.segments) == 16  # 5 × 31 / 10
    assert costs.projected(total.line) == 6


def test_attention_counts(small_clinic):
    found = selectors.attention(parsed(), selectors.rules_all(), today=NOW.date())

    assert (found.failed, found.unknown) == (1, 1)
    f = parsed()
    from_funnel = selectors.attention(
        f,
        selectors.rules_all(),
        today=NOW.date(),
        funnel_rows=selectors.funnel(f, selectors.rules_all()),
    )
    assert (from_funnel.failed, from_funnel.unknown) == (1, 1)
    missing = {rule.pk: channels for rule, channels in found.rules_missing_template}
    assert missing[small_clinic.visit_rule.pk] == ["line"]
    assert missing[small_clinic.recall_rule.pk] == ["sms"]


def test_cost_in_nt_dollars_and_line_beyond_the_allowance(small_clinic, settings):
    from decimal import Decimal

    settings.SMS_PRICE_PER_SEGMENT = {"TW": Decimal("1.5")}
    settings.SMS_PRICE_DEFAULT = Decimal("3")
    settings.LINE_MONTHLY_ALLOWANCE = 1
    settings.LINE_PRICE_PER_MESSAGE = Decimal("0.5")
    small_clinic.visit_rule.messages.filter(segments=2).update(country="TW")

    costs = selectors.costs(parsed(), selectors.rules_all(), today=NOW.date())

    visit = {row.rule.pk: row for row in costs.rows}[small_clinic.visit_rule.pk]
    assert visit.sms_cost == Decimal("6")  # 2 segments × 1.5 (TW) + 1 segment × 3
    assert costs.totals.sms_cost == Decimal("12")  # and the recall's 2 × 3
    assert costs.line_account == 2
    assert costs.line_cost == Decimal("0.5")  # one message beyond the allowance of one
    assert costs.projected_cost(Decimal("12")) == Decimal("37.20")  # 12 × 31 / 10


def test_attention_counts_daily_feed_files_refused_or_failed_in_the_period(small_clinic):
    def run(status, origin=ImportRun.Origin.FEED, day=5):
        ImportRun.objects.create(
            kind="appointments",
            file_name="his.csv",
            status=status,
            origin=origin,
            queued_at=at(day),
        )

    run(ImportRun.Status.REJECTED)  # too many bad rows: nothing applied
    run(ImportRun.Status.FAILED)
    run(ImportRun.Status.DONE)  # fine
    run(ImportRun.Status.REJECTED, origin=ImportRun.Origin.ADMIN)  # a clerk saw it happen
    run(ImportRun.Status.FAILED, day=10)  # after the period

    found = selectors.attention(parsed(), selectors.rules_all(), today=NOW.date())

    assert found.failed_imports == 2
