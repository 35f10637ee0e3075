"""flora: exact stacking, delta = sum_i p_i s_i B_i A_i; clients merge and restart."""

import pytest

from raflora import aggregate

from .checks import DTYPES, check_delta, check_merge_hand_back, random_ranks
from .reference import random_updates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("flora", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("seed", range(2))
def test_client_restarts_from_fresh_adapter(seed):
    check_merge_hand_back("flora", seed, random_ranks(seed))


def test_global_adapter_is_the_whole_stack():
    ranks = [2, 3, 5]
    res = aggregate("flora", random_updates(0, ranks))
    for module, (m, n) in res.shapes.items():
        assert res.global_rank(module) == sum(ranks)
        assert res.download_values(module, 2) == sum(ranks) * (m + n)
