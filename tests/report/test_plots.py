"""The plots' choices that a reader relies on: the metric axis never magnifies a small difference."""

from __future__ import annotations

import pytest

from raflora.report.plots import MIN_METRIC_SPAN, metric_limits


@pytest.mark.parametrize("values", [[0.90, 0.905], [0.98, 0.995], [0.0, 0.01], [0.5]])
def test_the_metric_axis_spans_at_least_the_minimum_inside_0_1(values):
    low, high = metric_limits(values)
    assert high - low >= MIN_METRIC_SPAN and 0.0 <= low <= min(values) and max(values) <= high <= 1.0


def test_a_wide_spread_keeps_its_own_range():
    low, high = metric_limits([0.2, 0.9])
    assert low == pytest.approx(0.2 - 0.021) and high == pytest.approx(0.9 + 0.021)
    assert metric_limits([]) == (0.0, 1.0)
