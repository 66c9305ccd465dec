"""The relative risk and its 95 % interval (Katz log method) against a textbook example."""

import pytest

from dashboard.stats import relative_risk


def test_relative_risk_matches_the_textbook_example():
    # Moore, McCabe & Craig, Introduction to the Practice of Statistics (9th ed.), Example
    # 8.18, aspirin and blood clots: 45 of 411 on aspirin and 73 of 411 on placebo had a major
    # vascular event; RR 0.62, 95 % CI 0.4364 to 0.8707.
    effect = relative_risk(45, 411, 73, 411, min_group=30)

    assert effect.enough
    assert effect.rr == pytest.approx(45 / 73)
    assert effect.low == pytest.approx(0.4364, abs=1e-4)
    assert effect.high == pytest.approx(0.8707, abs=1e-4)


def test_below_the_minimum_there_is_no_estimate():
    effect = relative_risk(20, 29, 10, 100, min_group=30)

    assert not effect.enough and effect.rr is None


def test_no_events_in_a_group_leaves_the_ratio_undefined():
    effect = relative_risk(0, 50, 10, 50, min_group=30)

    assert effect.enough and effect.rr is None and effect.low is None
