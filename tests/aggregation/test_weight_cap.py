"""max_weight: no update's share of a round above the cap (water-filling), the same in aggregate and
aggregate_files, FedAvg's shares bit for bit when the cap is not reached."""

from __future__ import annotations

import pytest
import torch

from raflora import ClientUpdate, aggregate
from raflora.aggregation import AGGREGATORS
from raflora.aggregation.streamed import aggregate_files, write_upload
from raflora.aggregation.validate import capped_shares

from .reference import F64, assert_close, product_sum, random_updates

SHAPES = {"q_proj": (64, 80), "v_proj": (80, 64)}  # the stack stays smaller than the matrix


def with_counts(updates, counts):
    return [ClientUpdate(u.client_id, u.factors, n) for u, n in zip(updates, counts)]


def test_shares_over_the_cap_are_cut_and_the_rest_spread_by_count():
    # 10**12 - 1 claimed examples against 10 + 20 + 30: FedAvg gives it 0.99999999994
    assert capped_shares([10**12 - 1, 10, 20, 30], 0.5) == pytest.approx([0.5, 0.5 / 6, 1 / 6, 0.25], abs=1e-15)
    # two over the cap: 0.4 each, the remaining 0.2 split 1:3
    assert capped_shares([1000, 1000, 10, 30], 0.4) == pytest.approx([0.4, 0.4, 0.05, 0.15], abs=1e-15)
    # the freed 0.2 lifts the others (0.2 -> 0.3) without taking any over the cap
    assert capped_shares([90, 30, 27, 3], 0.4) == pytest.approx([0.4, 0.3, 0.27, 0.03], abs=1e-15)


def test_a_second_pass_catches_a_share_the_first_cut_raised_over_the_cap():
    # 0.8 -> 0.35; the freed share lifts 0.15 to 0.65 * 15/20 = 0.4875 > 0.35: capped too
    assert capped_shares([80, 15, 5], 0.35) == pytest.approx([0.35, 0.35, 0.30], abs=1e-15)


def test_shares_under_the_cap_are_fedavgs_bit_for_bit():
    counts = [37, 11, 52, 9]
    total = float(sum(counts))
    assert capped_shares(counts, 0.5) == [n / total for n in counts]
    assert capped_shares(counts, 1.0) == [n / total for n in counts]


@pytest.mark.parametrize("counts, cap", [([5, 1], 0.5), ([9, 1, 1, 1], 0.25), ([7, 3, 2], 0.2)])
def test_clients_that_cannot_all_fit_under_the_cap_get_equal_shares(counts, cap):
    assert capped_shares(counts, cap) == [1.0 / len(counts)] * len(counts)


def test_the_capped_weights_feed_the_formula_against_the_float64_reference():
    updates = with_counts(random_updates(5, [2, 4, 8, 4], SHAPES), [10**12 - 1, 10, 20, 30])
    result = aggregate("flexlora", updates, max_weight=0.5)
    want = [0.5, 0.5 * 10 / 60, 0.5 * 20 / 60, 0.5 * 30 / 60]  # written out, not capped_shares again
    assert list(result.weights.values()) == pytest.approx(want, abs=1e-15)
    for m in SHAPES:
        assert_close(result.delta(m), product_sum(updates, m, want), F64)
    uncapped = aggregate("flexlora", updates)
    assert uncapped.weights["c0"] > 0.9999999999


@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_aggregate_files_caps_as_aggregate_does(tmp_path, method):
    ranks = [4] * 4 if not AGGREGATORS[method].mixed_ranks else [2, 4, 8, 4]
    frozen = 0 if not AGGREGATORS[method].trains_a else None
    updates = random_updates(6, ranks, SHAPES, dtype=torch.float32, frozen_a_seed=frozen)
    updates = with_counts(updates, [900, 10, 20, 30])
    uploads = [write_upload(tmp_path / f"{u.client_id}.safetensors", u) for u in updates]
    direct = aggregate(method, updates, max_weight=0.4)
    streamed = aggregate_files(method, uploads, max_weight=0.4)
    assert direct.weights == streamed.weights and max(direct.weights.values()) == pytest.approx(0.4)
    for m in SHAPES:
        assert torch.equal(streamed.singular_values(m), direct.singular_values(m))


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_a_cap_outside_0_1_is_refused_before_any_update_is_read(bad):
    with pytest.raises(ValueError, match="max_weight must be a number in \\(0, 1\\]"):
        aggregate("raflora", random_updates(1, [2, 4], SHAPES), max_weight=bad)
