"""The interval, Wilcoxon p and verdict of paired differences, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from raflora.report.significance import confidence_interval, paired_inference, verdict, wilcoxon_p


def test_interval_is_students_t_with_n_minus_1_degrees():
    # mean 0.15, sd 0.0707107, n 2: t(0.975, 1) = 12.7062047
    low, high = confidence_interval([0.1, 0.2])
    half = 12.7062047 * math.sqrt(0.005) / math.sqrt(2)
    assert low == pytest.approx(0.15 - half, abs=1e-6) and high == pytest.approx(0.15 + half, abs=1e-6)
    # ten values 1..10: mean 5.5, sd 3.0276504, t(0.975, 9) = 2.2621572
    low, high = confidence_interval([float(v) for v in range(1, 11)])
    half = 2.2621572 * 3.0276504 / math.sqrt(10)
    assert (low, high) == pytest.approx((5.5 - half, 5.5 + half), abs=1e-6)
    assert confidence_interval([0.3]) is None


def test_wilcoxon_exact_p_for_same_sign_differences():
    # n differences of one sign: the exact two-sided p is 2 / 2^n
    assert wilcoxon_p([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    assert wilcoxon_p([0.01 * k for k in range(1, 11)]) == pytest.approx(2 / 1024)
    assert wilcoxon_p([0.0, 0.0]) == 1.0
    assert wilcoxon_p([]) is None


def test_verdict_needs_the_interval_to_exclude_zero():
    assert verdict((0.01, 0.2)) == "ahead"
    assert verdict((-0.2, -0.01)) == "behind"
    assert verdict((-0.01, 0.2)) == "level"
    assert verdict(None) == "level"
    # a loss: lower is better
    assert verdict((0.01, 0.2), "lower") == "behind"
    assert verdict((-0.2, -0.01), "lower") == "ahead"
    assert verdict((0.01, 0.2), None) == "above"


def test_three_agreeing_seeds_can_still_be_level():
    # the same sign on 3 seeds but a spread as large as the mean: the interval covers 0
    result = paired_inference([0.01, 0.05, 0.002])
    assert result["verdict"] == "level" and result["wilcoxon_p"] == pytest.approx(0.25)
    assert paired_inference([0.040, 0.041, 0.042])["verdict"] == "ahead"
