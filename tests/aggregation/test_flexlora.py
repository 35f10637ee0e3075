"""flexlora: delta = sum_i p_i s_i B_i A_i; a client of rank r gets the best rank-r approximation."""

import pytest

from raflora import aggregate

from .checks import DTYPES, check_delta, check_svd_hand_back, check_svd_hand_back_stays_trainable, random_ranks
from .reference import F64, assert_close, best_rank, random_updates, ref_delta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("flexlora", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_client_gets_best_rank_r_approximation(seed, dtype):
    check_svd_hand_back("flexlora", seed, random_ranks(seed), dtype)


def test_hand_back_after_singular_values_and_in_any_rank_order():
    # The top-k SVD cache must grow when a larger rank is asked after a smaller one.
    updates = random_updates(9, [1, 2, 6])
    res = aggregate("flexlora", updates)
    res.singular_values("q_proj")
    small = res.client_factors("q_proj", 1, scale=1.0)
    large = res.client_factors("q_proj", 6, scale=1.0)
    dense = ref_delta("flexlora", updates, "q_proj")
    assert_close(small.B @ small.A, best_rank(dense, 1), F64, "rank 1")
    assert_close(large.B @ large.A, best_rank(dense, 6), F64, "rank 6 after rank 1")


def test_missing_directions_come_back_trainable():
    check_svd_hand_back_stays_trainable("flexlora")
