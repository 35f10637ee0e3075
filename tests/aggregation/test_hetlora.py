"""hetlora: zero padding weighted by ||s_i B_i A_i||_F; client-side tail penalty and self-pruning."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation.hetlora import self_prune, tail_penalty

from .checks import DTYPES, check_delta, check_truncation_hand_back, random_ranks
from .reference import F64, assert_close, p, random_updates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("hetlora", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_first_components(seed):
    check_truncation_hand_back("hetlora", seed, random_ranks(seed))


def test_weights_ignore_num_examples_when_norms_differ():
    # A bigger update pulls the average towards it regardless of the example counts.
    A = torch.ones((1, 2), dtype=F64)
    B = torch.ones((2, 1), dtype=F64)
    ups = [
        ClientUpdate("small", {"w": LoRAFactors(A=A, B=B, scale=1.0)}, 1000),
        ClientUpdate("big", {"w": LoRAFactors(A=A, B=3 * B, scale=1.0)}, 1),
    ]
    delta = aggregate("hetlora", ups).delta("w")
    # weights 1/4 and 3/4: B_avg = (1/4 + 9/4) = 2.5, A_avg = 1.
    assert torch.allclose(delta, torch.full((2, 2), 2.5, dtype=F64))


def test_all_zero_updates_fall_back_to_example_weights():
    updates = random_updates(2, [2, 3])
    zeroed = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A, B=torch.zeros_like(f.B), scale=f.scale) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in updates
    ]
    res = aggregate("hetlora", zeroed)
    weights = p(zeroed)
    for module in res.modules:
        f = res.client_factors(module, 3, scale=1.0)
        A0, A1 = (u.factors[module].A for u in zeroed)
        expected = weights[1] * A1
        expected[:2] += weights[0] * A0
        assert_close(f.A, expected, F64, "fallback A average")
        assert torch.count_nonzero(res.delta(module)) == 0


def test_tail_penalty():
    A = torch.arange(12, dtype=F64).reshape(4, 3)
    B = torch.arange(20, dtype=F64).reshape(5, 4)
    # gamma 0.5 on rank 4: tail is components 3 and 4.
    expected = torch.linalg.norm(B[:, 2:]) * torch.linalg.norm(A[2:])
    assert float(tail_penalty(A, B, 0.5)) == pytest.approx(float(expected))
    assert float(tail_penalty(A, B, 1.0)) == 0.0


def test_self_prune_shrinks_only_when_the_tail_shrank():
    g = torch.Generator().manual_seed(0)
    A = torch.randn((8, 6), generator=g, dtype=F64)
    B = torch.randn((5, 8), generator=g, dtype=F64)
    received = LoRAFactors(A=A, B=B, scale=0.5)
    shrunk = LoRAFactors(A=A, B=torch.cat([B[:, :4], 0.1 * B[:, 4:]], dim=1), scale=0.5)
    pruned = self_prune(received, shrunk, gamma=0.5, r_min=2)
    assert pruned.rank == 4 and pruned.scale == 0.5
    assert torch.equal(pruned.A, A[:4]) and torch.equal(pruned.B, B[:, :4])
    grown = LoRAFactors(A=A, B=torch.cat([B[:, :4], 2 * B[:, 4:]], dim=1), scale=0.5)
    assert self_prune(received, grown, gamma=0.5, r_min=2) is grown
    # r_min is a floor: gamma 0.25 would give rank 2, r_min keeps 3.
    assert self_prune(received, shrunk, gamma=0.25, r_min=3).rank == 3
    # Never below rank 1, whatever r_min says: gamma 0.1 on rank 8 floors to 0.
    assert self_prune(received, shrunk, gamma=0.1, r_min=0).rank == 1
    with pytest.raises(ValueError, match="gamma"):
        self_prune(received, shrunk, gamma=0.0, r_min=1)
