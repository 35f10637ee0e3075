"""raflora: rank-partitioned aggregation; partition P_k weighted over the clients reaching l_k."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate

from .checks import DTYPES, check_delta, check_svd_hand_back, check_svd_hand_back_stays_trainable, random_ranks
from .reference import F64, assert_close, random_updates, ref_delta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("raflora", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_delta_with_federation_rank_levels(seed, dtype):
    # Levels 3 and 6 have no client this round: their partitions are split at 3 and 6 anyway.
    updates = random_updates(seed, [2, 8, 4, 8, 2], dtype=dtype)
    check_delta("raflora", updates, dtype, rank_levels=[2, 3, 4, 6, 8])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_client_gets_best_rank_r_approximation(seed, dtype):
    check_svd_hand_back("raflora", seed, random_ranks(seed), dtype)


@pytest.mark.parametrize("seed", range(4))
def test_homogeneous_ranks_equal_flexlora_exactly(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    ra = aggregate("raflora", updates)
    flex = aggregate("flexlora", updates)
    for module in ra.modules:
        assert torch.equal(ra.delta(module), flex.delta(module))
        assert torch.equal(ra.singular_values(module), flex.singular_values(module))


def test_partition_is_not_diluted():
    # Client "low" (rank 1) and "high" (rank 2), equal weight, orthogonal unit components:
    # partition {1} averages both clients, partition {2} has only "high" at full weight.
    A = torch.eye(2, 3, dtype=F64)
    B = torch.eye(3, 2, dtype=F64)
    ups = [
        ClientUpdate("low", {"w": LoRAFactors(A=A[:1], B=B[:, :1], scale=1.0)}, 5),
        ClientUpdate("high", {"w": LoRAFactors(A=A, B=B, scale=1.0)}, 5),
    ]
    delta = aggregate("raflora", ups).delta("w")
    expected = torch.zeros((3, 3), dtype=F64)
    expected[0, 0] = 1.0
    expected[1, 1] = 1.0
    assert torch.allclose(delta, expected)


def test_rank_outside_levels_is_refused():
    updates = random_updates(1, [2, 4, 3])
    res = aggregate("raflora", updates, rank_levels=[2, 4, 8])
    assert [(cid, module) for cid, module, _ in res.rejected] == [("c2", "q_proj")]
    assert "'c2'" in res.rejected[0][2] and "rank 3" in res.rejected[0][2]
    kept = updates[:2]
    for module in res.modules:
        assert_close(res.delta(module), ref_delta("raflora", kept, module, rank_levels=[2, 4, 8]), F64)


@pytest.mark.parametrize("levels", [[0, 2], [-1]])
def test_bad_rank_levels_raise(levels):
    with pytest.raises(ValueError, match="rank_levels"):
        aggregate("raflora", random_updates(0, [2]), rank_levels=levels)


def test_missing_directions_come_back_trainable():
    check_svd_hand_back_stays_trainable("raflora")
