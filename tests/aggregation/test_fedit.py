"""fedit: delta = (sum p_i s_i B_i)(sum p_i A_i), homogeneous ranks only."""

import pytest

from raflora import aggregate

from .checks import DTYPES, check_delta, check_truncation_hand_back, random_ranks
from .reference import F64, assert_close, random_updates, ref_delta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("fedit", random_updates(seed, random_ranks(seed, homogeneous=True), dtype=dtype), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_first_components(seed):
    check_truncation_hand_back("fedit", seed, random_ranks(seed, homogeneous=True))


def test_off_rank_client_is_refused_and_the_rest_aggregated():
    updates = random_updates(5, [4, 4, 2, 4])
    res = aggregate("fedit", updates)
    assert [(cid, module) for cid, module, _ in res.rejected] == [("c2", "q_proj")]
    reason = res.rejected[0][2]
    assert "'c2'" in reason and "q_proj" in reason and "homogeneous" in reason
    kept = [u for u in updates if u.client_id != "c2"]
    assert set(res.weights) == {"c0", "c1", "c3"}
    for module in res.modules:
        assert_close(res.delta(module), ref_delta("fedit", kept, module), F64)
