"""The relative risk of an outcome with vs without a message, and its 95 % confidence interval
by Katz's log method (Katz et al. 1978; Gardner & Altman, Statistics with Confidence, 51-52):

    RR = (a / n1) / (c / n2)
    SE(ln RR) = sqrt(1/a - 1/n1 + 1/c - 1/n2)
    95 % CI = exp(ln RR ± 1.96 · SE)

where a of n1 patients sent the message had the outcome, and c of n2 without it. Pure Python on
four counts that come from SQL."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the normal distribution's 97.5th percentile


@dataclass(frozen=True)
class Effect:
    with_events: int
    with_total: int
    without_events: int
    without_total: int
    enough: bool  # both groups reach the minimum count
    rr: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def with_rate(self) -> float | None:
        return self.with_events / self.with_total if self.with_total else None

    @property
    def without_rate(self) -> float | None:
        return self.without_events / self.without_total if self.without_total else None


def relative_risk(a: int, n1: int, c: int, n2: int, *, min_group: int = 30) -> Effect:
    """The effect of a message: `a` of `n1` with it had the outcome, `c` of `n2` without.

    Below `min_group` in either group there is no estimate (enough=False). With no outcome at
    all in a group the ratio or its interval is undefined and left None."""
    if min(n1, n2) < max(min_group, 1):
        return Effect(a, n1, c, n2, enough=False)
    if a == 0 or c == 0:
        return Effect(a, n1, c, n2, enough=True)
    rr = (a / n1) / (c / n2)
    se = math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
    spread = Z_95 * se
    return Effect(
        a, n1, c, n2, enough=True, rr=rr, low=rr * math.exp(-spread), high=rr * math.exp(spread)
    )
