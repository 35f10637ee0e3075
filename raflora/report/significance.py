"""What a paired difference over seeds supports: its 95 % confidence interval, a Wilcoxon p, a verdict.

For the differences ``d_s = reference_s - other_s`` over ``n`` seeds:

- the interval is Student's ``mean ± t_{0.975, n-1} * sd / sqrt(n)`` (``sd`` with divisor ``n - 1``),
  the interval a paired t-test would report; it needs two seeds;
- ``wilcoxon_p`` is the two-sided p of the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact
  for the small ``n`` of seed sweeps), which does not assume normal differences; zero differences are
  dropped (Wilcoxon's own rule), and ``p = 1`` when every difference is zero;
- the verdict is ``"ahead"`` when the interval lies on the better side of 0 (above it for an
  accuracy, below it for a loss), ``"behind"`` when it lies on the worse side, and ``"level"``
  otherwise (also for one seed); for a quantity with no better side (``rho_rmin``) it says
  ``"above"`` / ``"below"`` / ``"level"``: the only wording the results page uses.

Three seeds give a wide interval and a Wilcoxon p of at least 0.25, so "ahead" needs consistent
differences or more seeds; that is the point.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

LEVEL = 0.95  # the confidence of every interval on the results page and in reports


def confidence_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student's t interval of the mean of ``values``; None for fewer than two values."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def wilcoxon_p(values: Sequence[float]) -> float | None:
    """Two-sided p of the Wilcoxon signed-rank test that the differences are centred on 0; None
    for no values, 1.0 when every difference is 0 (nothing to rank)."""
    from scipy.stats import wilcoxon

    if not values:
        return None
    if all(v == 0 for v in values):
        return 1.0
    return float(wilcoxon(values, zero_method="wilcox", alternative="two-sided").pvalue)


def verdict(interval: tuple[float, float] | None, better: str | None = "higher") -> str:
    """Where the interval of ``reference - other`` puts the reference: ``better`` is ``"higher"``
    (an accuracy), ``"lower"`` (a loss) or None (no better side)."""
    if interval is None or interval[0] <= 0 <= interval[1]:
        return "level"
    above = interval[0] > 0
    if better is None:
        return "above" if above else "below"
    return "ahead" if above == (better == "higher") else "behind"


def paired_inference(values: Sequence[float], better: str | None = "higher") -> dict[str, Any]:
    """The interval, Wilcoxon p and verdict of paired differences, as a report stores them."""
    interval = confidence_interval(values)
    return {
        "ci95": None if interval is None else list(interval),
        "wilcoxon_p": wilcoxon_p(values),
        "verdict": verdict(interval, better),
    }
