"""carryover: FlexLoRA plus the previous global update's unreturned share, against a dense float64
reference; no collapse, no amplification, FlexLoRA when every client reaches every direction."""

from __future__ import annotations

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.lora import LowRank, energy_ratio
from raflora.simulate import simulate_collapse

from .checks import DTYPES, random_ranks
from .reference import F64, assert_close, assert_singular_values, random_updates, ref_carryover


def previous_update(seed, shapes, rank=6, dtype=F64):
    g = torch.Generator().manual_seed(1000 + seed)
    return {m: random_pair(g, s, rank, dtype) for m, s in shapes.items()}


def random_pair(g, shape, rank, dtype=F64):
    """A random ``LowRank`` of ``shape``; ``B`` is drawn before ``A``."""
    B = torch.randn(shape[0], rank, generator=g, dtype=dtype)
    return LowRank(A=torch.randn(rank, shape[1], generator=g, dtype=dtype), B=B)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    updates = random_updates(seed, random_ranks(seed), dtype=dtype)
    shapes = {m: f.shape for m, f in updates[0].factors.items()}
    previous = previous_update(seed, shapes, dtype=dtype)
    top = 6
    res = aggregate("carryover", updates, previous=previous, top_rank=top)
    assert res.rejected == []
    for m in res.modules:
        expected = ref_carryover(updates, m, previous[m].dense(), top)
        assert_close(res.delta(m), expected, dtype, f"carryover {m}")
        assert_singular_values(res, m, expected, dtype)


def test_without_a_previous_update_it_is_flexlora():
    updates = random_updates(3, [2, 4, 8])
    a, b = aggregate("carryover", updates), aggregate("flexlora", updates)
    for m in a.modules:
        assert torch.equal(a.delta(m), b.delta(m))


def test_every_client_reaching_every_direction_is_flexlora():
    updates = random_updates(5, [4, 4, 4])
    shapes = {m: f.shape for m, f in updates[0].factors.items()}
    a = aggregate("carryover", updates, previous=previous_update(5, shapes, rank=4), top_rank=4)
    b = aggregate("flexlora", updates)
    for m in a.modules:
        assert_close(a.delta(m), b.delta(m), F64, "q_j = 1 for every carried direction")


def test_clients_that_return_their_start_leave_the_update_as_it_was():
    """The fixed point that rank collapse breaks: every client sends back its rank-r_i slice of the
    previous update unchanged; carryover returns that update's top r_max part whole."""
    g = torch.Generator().manual_seed(7)
    G = random_pair(g, (30, 20), 8)
    U, S, Vh = torch.linalg.svd(G.dense(), full_matrices=False)
    ranks, sizes = [2, 4, 8, 2], [50, 10, 5, 35]
    updates = [
        ClientUpdate(
            i, {"w": LoRAFactors(A=(S[:r, None] * Vh[:r]).contiguous(), B=U[:, :r].contiguous(), scale=1.0)}, n
        )
        for i, (r, n) in enumerate(zip(ranks, sizes))
    ]
    carried = aggregate("carryover", updates, previous={"w": G}, top_rank=8).delta("w")
    assert_close(carried, G.dense(), F64, "carry-over of every direction is exactly 1")
    flex = aggregate("flexlora", updates).delta("w")
    assert energy_ratio(torch.linalg.svdvals(flex), 2) > energy_ratio(S, 2) + 0.05, (
        "flexlora shrinks the high directions"
    )


def test_directions_nobody_reached_are_kept_whole():
    g = torch.Generator().manual_seed(11)
    G = random_pair(g, (24, 16), 8)
    updates = random_updates(2, [2, 2], shapes={"w": (24, 16)})
    res = aggregate("carryover", updates, previous={"w": G}, top_rank=8)
    U, S, Vh = torch.linalg.svd(G.dense(), full_matrices=False)
    tail = (U[:, 2:8] * S[2:8]) @ Vh[2:8]
    expected = ref_carryover(updates, "w", G.dense(), 8)
    assert_close(res.delta("w"), expected, F64)
    # directions 1-2 came back from both clients (q = 1): nothing of them is carried
    assert_close(expected - aggregate("flexlora", updates).delta("w").to(F64), tail, F64, "3-8 whole")


def test_rho_rmin_does_not_collapse_in_the_no_training_loop():
    flex = simulate_collapse("flexlora", [2, 4, 8, 16], rounds=20)
    carry = simulate_collapse("carryover", [2, 4, 8, 16], rounds=20)
    assert flex.rho[-1] > 0.95, "flexlora collapses"
    assert carry.rho[-1] < flex.rho[0] + 0.1, "carryover keeps the start's spread"
