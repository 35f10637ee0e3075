"""consensus: each rank partition weighted between flexlora (p_i) and raflora (p_i / P_k) by its
clients' agreement lambda_k, against a dense float64 reference."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation.consensus import partition_agreement
from raflora.simulate import simulate_collapse

from .checks import DTYPES, check_delta, check_svd_hand_back, check_svd_hand_back_stays_trainable, random_ranks
from .reference import F64, assert_close, p, random_updates, ref_consensus, ref_raflora

OPTIONS = [{}, {"strength": 0.5}, {"lone": "flexlora"}, {"strength": 0.25, "lone": "flexlora"}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("consensus", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_options_match_dense_reference(seed, options):
    # Ranks 1..8 with one client at the top: a lone partition on every seed.
    ranks = random_ranks(seed) + [9]
    check_delta("consensus", random_updates(seed, ranks), F64, **options)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_agreement_per_partition_matches_reference(seed, options):
    updates = random_updates(seed, random_ranks(seed) + [9])
    for module in updates[0].factors:
        got = partition_agreement([u.factors[module] for u in updates], p(updates), **options)
        _, expected = ref_consensus(updates, module, **options)
        assert [level for level, _ in got] == sorted({u.factors[module].rank for u in updates})
        assert torch.allclose(torch.tensor([lam for _, lam in got]), torch.tensor(expected), rtol=0, atol=1e-12)
        assert all(0.0 <= lam <= 1.0 for _, lam in got)


@pytest.mark.parametrize("seed", range(4))
def test_strength_zero_is_flexlora(seed):
    updates = random_updates(seed, random_ranks(seed))
    ours = aggregate("consensus", updates, strength=0.0)
    flex = aggregate("flexlora", updates)
    for module in ours.modules:
        assert_close(ours.delta(module), flex.delta(module), F64, "strength 0")
        assert torch.equal(ours.delta(module), flex.delta(module))


@pytest.mark.parametrize("seed", range(4))
def test_homogeneous_ranks_are_flexlora_exactly(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    ours, flex = aggregate("consensus", updates), aggregate("flexlora", updates)
    for module in ours.modules:
        assert torch.equal(ours.delta(module), flex.delta(module))


def common_slices(ranks, sizes, seed=0):
    """Every client uploads the first r_i components of one pair: its pieces agree in every partition."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn((max(ranks), 7), generator=g, dtype=F64)
    B = torch.randn((6, max(ranks)), generator=g, dtype=F64)
    updates = [
        ClientUpdate(i, {"w": LoRAFactors(A[:r], B[:, :r], 0.5)}, n) for i, (r, n) in enumerate(zip(ranks, sizes))
    ]
    return updates, 0.5 * B @ A


def test_identical_clients_agree_fully():
    updates, whole = common_slices([2, 4, 4, 8, 8], [30, 10, 25, 5, 15])
    agreement = partition_agreement([u.factors["w"] for u in updates], p(updates))
    assert [level for level, _ in agreement] == [2, 4, 8]
    assert all(abs(lam - 1.0) < 1e-12 for _, lam in agreement)
    delta = aggregate("consensus", updates).delta("w")
    assert_close(delta, whole, F64, "agreeing partitions are kept whole")
    assert_close(delta, ref_raflora(updates, "w"), F64, "lambda = 1 is raflora")


def test_a_lone_top_client_borrows_the_agreement_below_or_gets_its_share():
    updates, whole = common_slices([2, 4, 4, 8], [30, 10, 25, 5])
    borrow = partition_agreement([u.factors["w"] for u in updates], p(updates))
    assert abs(borrow[-1][1] - 1.0) < 1e-12, "d = 0 below: the lone partition is kept whole"
    assert_close(aggregate("consensus", updates).delta("w"), whole, F64)
    alone = partition_agreement([u.factors["w"] for u in updates], p(updates), lone="flexlora")
    assert alone[-1][1] == 0.0 and abs(alone[1][1] - 1.0) < 1e-12
    got = aggregate("consensus", updates, lone="flexlora").delta("w")
    U = updates[-1].factors["w"]
    # components 5-8 at the lone client's data share 5 / 70, the rest whole
    top = 0.5 * U.B[:, 4:] @ U.A[4:]
    assert_close(got, whole - top + (5 / 70) * top, F64)


def test_opposite_pieces_get_flexlora_weights():
    # Partition 2 holds b2 a2^T from one client and -b2 a2^T from the other: their mean is zero,
    # d = 1, lambda = 0, so it keeps the plain data shares (raflora would double them).
    g = torch.Generator().manual_seed(3)
    A = torch.randn((2, 5), generator=g, dtype=F64)
    B = torch.randn((4, 2), generator=g, dtype=F64)
    flip = torch.tensor([1.0, -1.0], dtype=F64)
    updates = [
        ClientUpdate("low", {"w": LoRAFactors(A[:1], B[:, :1], 1.0)}, 10),
        ClientUpdate("up", {"w": LoRAFactors(A, B, 1.0)}, 5),
        ClientUpdate("down", {"w": LoRAFactors(A * flip[:, None], B, 1.0)}, 5),
    ]
    agreement = partition_agreement([u.factors["w"] for u in updates], p(updates))
    assert agreement[1][0] == 2 and abs(agreement[1][1]) < 1e-12
    assert_close(aggregate("consensus", updates).delta("w"), aggregate("flexlora", updates).delta("w"), F64)


def test_agreement_does_not_overflow_or_depend_on_the_magnitude():
    updates = random_updates(5, [2, 4, 4, 8])
    factors = [u.factors["q_proj"] for u in updates]
    huge = [LoRAFactors(f.A * 1e150, f.B * 1e150, f.scale) for f in factors]
    tiny = [LoRAFactors(f.A * 1e-170, f.B * 1e-170, f.scale) for f in factors]
    base = partition_agreement(factors, p(updates))
    for moved in (huge, tiny):
        got = partition_agreement(moved, p(updates))
        assert all(abs(a - b) < 1e-12 for (_, a), (_, b) in zip(got, base)), (got, base)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_client_gets_best_rank_r_approximation(seed, dtype):
    check_svd_hand_back("consensus", seed, random_ranks(seed), dtype)


def test_missing_directions_come_back_trainable():
    check_svd_hand_back_stays_trainable("consensus")


@pytest.mark.parametrize(
    "options, named",
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": "1"}, "strength"),
        ({"strength": True}, "strength"),
        ({"lone": "drop"}, "lone"),
    ],
)
def test_bad_options_raise(options, named):
    with pytest.raises(ValueError, match=f"consensus: {named}"):
        aggregate("consensus", random_updates(0, [2, 4]), **options)


def test_rho_rmin_does_not_collapse_in_the_no_training_loop():
    flex = simulate_collapse("flexlora", [2, 4, 8, 16], rounds=20)
    ours = simulate_collapse("consensus", [2, 4, 8, 16], rounds=20)
    assert flex.rho[-1] > 0.95, "flexlora collapses"
    assert ours.rho[-1] < flex.rho[0] + 0.1, "consensus keeps the start's spread"
