"""consensus: carryover plus each rank partition's mean change kept as far as its clients agree on
their changes (lambda_k), against a dense float64 reference that forms every start, upload and
change densely."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation import method_named
from raflora.aggregation.consensus import partition_agreement
from raflora.lora import LowRank
from raflora.simulate import simulate_collapse

from .checks import DTYPES, check_delta, check_svd_hand_back, check_svd_hand_back_stays_trainable, random_ranks
from .reference import F64, assert_close, assert_singular_values, best_rank, p, random_updates, ref_consensus

OPTIONS = [{}, {"strength": 0.5}, {"lone": "borrow"}, {"strength": 0.25, "lone": "borrow"}]
RANK_MIXES = [[2, 4, 8], [1, 1, 3, 6, 6], [4, 2, 4, 2, 8, 8], [8, 2]]


def previous_update(seed, shapes, rank=6, dtype=F64):
    g = torch.Generator().manual_seed(1000 + seed)
    return {
        m: LowRank(
            B=torch.randn(s[0], rank, generator=g, dtype=dtype), A=torch.randn(rank, s[1], generator=g, dtype=dtype)
        )
        for m, s in shapes.items()
    }


def trained_round(seed, ranks, previous, step=0.3, common=0.0, sizes=None, dtype=F64):
    """Clients start from the best rank-r_i approximation of ``previous`` (as a federation hands it
    out) and add their own change: ``step`` times independent noise on each factor, plus ``common``
    times one change shared by every client."""
    g = torch.Generator().manual_seed(seed)
    start = aggregate(
        "carryover", [ClientUpdate("g", {m: LoRAFactors(A=f.A, B=f.B, scale=1.0)}, 1) for m, f in previous.items()]
    )
    shared = {
        m: (
            torch.randn(f.B.shape[0], max(ranks), generator=g, dtype=F64),
            torch.randn(max(ranks), f.A.shape[1], generator=g, dtype=F64),
        )
        for m, f in previous.items()
    }
    updates = []
    for i, r in enumerate(ranks):
        factors = {}
        for m in previous:
            f = start.client_factors(m, r, scale=0.5)
            B = f.B + step * torch.randn(f.B.shape, generator=g, dtype=F64) + common * shared[m][0][:, :r]
            A = f.A + step * torch.randn(f.A.shape, generator=g, dtype=F64) + common * shared[m][1][:r]
            factors[m] = LoRAFactors(A=A.to(dtype), B=B.to(dtype), scale=0.5)
        updates.append(ClientUpdate(f"c{i}", factors, sizes[i] if sizes else 10 + 7 * i))
    return updates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_without_a_previous_update_matches_dense_reference(seed, dtype):
    check_delta("consensus", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("ranks", RANK_MIXES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_delta_with_a_previous_update_matches_dense_reference(ranks, dtype, options):
    updates = random_updates(len(ranks), ranks, dtype=dtype)
    shapes = {m: f.shape for m, f in updates[0].factors.items()}
    previous = previous_update(len(ranks), shapes, dtype=dtype)
    res = aggregate("consensus", updates, previous=previous, top_rank=8, **options)
    assert res.rejected == []
    for m in res.modules:
        expected, _ = ref_consensus(updates, m, previous=previous[m].dense(), top=8, **options)
        assert_close(res.delta(m), expected, dtype, f"consensus {m}")
        assert_singular_values(res, m, expected, dtype)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("ranks", RANK_MIXES, ids=str)
def test_agreement_per_partition_matches_reference(ranks, options):
    previous = previous_update(1, {"w": (12, 9)})
    for trained, prev in (
        (random_updates(2, ranks, {"w": (12, 9)}), None),
        (trained_round(2, ranks, previous), previous),
    ):
        got = partition_agreement([u.factors["w"] for u in trained], p(trained), prev and prev["w"], **options)
        _, expected = ref_consensus(trained, "w", previous=prev and prev["w"].dense(), **options)
        assert [level for level, _ in got] == sorted(set(ranks))
        assert torch.allclose(
            torch.tensor([lam for _, lam in got], dtype=F64), torch.tensor(expected, dtype=F64), atol=1e-10
        )
        assert all(0.0 <= lam <= 1.0 for _, lam in got)


@pytest.mark.parametrize("ranks", RANK_MIXES, ids=str)
def test_strength_zero_is_carryover_exactly(ranks):
    updates = random_updates(5, ranks, dtype=torch.float32)
    shapes = {m: f.shape for m, f in updates[0].factors.items()}
    for previous in (None, previous_update(5, shapes, dtype=torch.float32)):
        ours = aggregate("consensus", updates, strength=0.0, previous=previous, top_rank=8)
        carried = aggregate("carryover", updates, previous=previous, top_rank=8)
        for m in ours.modules:
            assert torch.equal(ours.delta(m), carried.delta(m))
            assert torch.equal(ours.singular_values(m), carried.singular_values(m))


def test_homogeneous_ranks_are_flexlora_and_carryover():
    updates = random_updates(4, [4, 4, 4])
    shapes = {m: f.shape for m, f in updates[0].factors.items()}
    previous = previous_update(4, shapes, rank=4)
    for m in shapes:
        assert torch.equal(aggregate("consensus", updates).delta(m), aggregate("flexlora", updates).delta(m))
        ours = aggregate("consensus", updates, previous=previous, top_rank=4).delta(m)
        assert_close(ours, aggregate("carryover", updates, previous=previous, top_rank=4).delta(m), F64)


def test_identical_changes_agree_fully_and_are_kept_whole():
    # Every client starts from its slice of G_t and ends at its slice of one common trained pair:
    # each partition's changes are identical, lambda = 1, and G_{t+1} = G_t + sum_k M_k.
    previous = previous_update(3, {"w": (14, 11)}, rank=8)
    ranks, sizes = [2, 4, 4, 8, 8], [30, 10, 25, 5, 15]
    updates = trained_round(3, ranks, previous, step=0.0, common=0.4, sizes=sizes)
    got = partition_agreement([u.factors["w"] for u in updates], p(updates), previous["w"])
    assert [level for level, _ in got] == [2, 4, 8]
    assert all(abs(lam - 1.0) < 1e-12 for _, lam in got), got
    top = updates[-1].factors["w"]  # a rank-8 client's upload: every partition's common end point
    delta = aggregate("consensus", updates, previous=previous, top_rank=8).delta("w")
    assert_close(delta, top.scale * top.B @ top.A, F64, "agreeing partitions move all the way")
    carried = aggregate("carryover", updates, previous=previous, top_rank=8).delta("w")
    assert float(torch.linalg.norm(carried - top.scale * top.B @ top.A)) > 0.1, "carryover moves less"


def test_independent_changes_get_a_small_agreement():
    # Many clients, each changing its start by independent zero-mean noise: no partition's mean
    # change is signal. The estimator is unbiased for noise, so lambda is ~0 on average.
    previous = previous_update(0, {"w": (40, 30)}, rank=8)
    ranks = [2, 4, 8] * 4
    values = []
    for seed in range(8):
        updates = trained_round(seed, ranks, previous, step=0.05)
        values += [lam for _, lam in partition_agreement([u.factors["w"] for u in updates], p(updates), previous["w"])]
    assert sum(values) / len(values) < 0.1, values
    fresh = []  # no previous update: the changes are the uploads, random and independent
    for seed in range(8):
        updates = random_updates(seed, ranks, {"w": (40, 30)})
        fresh += [lam for _, lam in partition_agreement([u.factors["w"] for u in updates], p(updates))]
    assert sum(fresh) / len(fresh) < 0.1, fresh


def test_a_client_that_did_not_train_has_no_change():
    """The columns of an upload line up with the start's directions: a client that returns what it
    was handed (SVDResult's balanced top-r_i factors of G_t) has C_ik ~ 0 in every partition."""
    res = aggregate("consensus", random_updates(8, [2, 4, 8], {"w": (16, 12)}, dtype=torch.float32))
    previous = {"w": res.delta_factors("w")}
    dense = previous["w"].dense().to(F64)
    idle = [ClientUpdate(f"c{r}", {"w": res.client_factors("w", r, scale=0.25)}, 10) for r in (2, 4, 8)]
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    low = 0
    for level in (2, 4, 8):
        start = (U[:, low:level] * S[low:level]) @ Vh[low:level]
        for u in idle[[2, 4, 8].index(level) :]:
            f = u.factors["w"]
            piece = f.scale * f.B[:, low:level].to(F64) @ f.A[low:level].to(F64)
            assert float(torch.linalg.norm(piece - start)) <= 1e-5 * float(torch.linalg.norm(dense))
        low = level
    # So the idle clients change nothing: G_{t+1} is G_t's top 8 directions (float32 rounding
    # aside), whatever lambda is.
    again = aggregate("consensus", idle, previous=previous, top_rank=8).delta("w")
    assert_close(again, best_rank(dense, 8), torch.float32, "idle clients keep G_t")
    # One idle client among trained ones: its change in the reference is ~0, and the library agrees.
    mixed = trained_round(4, [2, 4, 8, 8], {"w": previous["w"].clone()}, step=0.2, dtype=torch.float32) + idle[2:]
    _, expected = ref_consensus(mixed, "w", previous=dense, top=8)
    got = partition_agreement([u.factors["w"] for u in mixed], p(mixed), previous["w"])
    assert torch.allclose(
        torch.tensor([lam for _, lam in got], dtype=F64), torch.tensor(expected, dtype=F64), atol=1e-4
    )


def test_a_lone_partition_is_carried_or_borrows_the_lambda_below():
    previous = previous_update(6, {"w": (14, 11)}, rank=8)
    updates = trained_round(6, [2, 4, 4, 8], previous, step=0.01, common=0.3)
    fs, w = [u.factors["w"] for u in updates], p(updates)
    carried = partition_agreement(fs, w, previous["w"])
    borrowed = partition_agreement(fs, w, previous["w"], lone="borrow")
    assert carried[-1] == (8, 0.0) and carried[:2] == borrowed[:2]
    assert borrowed[-1] == (8, borrowed[1][1]) and borrowed[1][1] > 0.9
    half = partition_agreement(fs, w, previous["w"], lone="borrow", strength=0.5)
    assert all(abs(h - 0.5 * b) < 1e-15 for (_, h), (_, b) in zip(half, borrowed))
    # A round of one client: nothing to borrow from.
    assert partition_agreement(fs[-1:], [1.0], previous["w"], lone="borrow") == [(8, 0.0)]


def test_agreement_does_not_overflow_or_depend_on_the_magnitude():
    start = previous_update(5, {"q_proj": (10, 7)})["q_proj"]
    updates = trained_round(5, [2, 4, 4, 8], {"q_proj": start}, step=0.1, common=0.3)
    factors = [u.factors["q_proj"] for u in updates]
    # Products of ~1e300 and ~1e-340 (no previous update) or ~1e-280 (a previous update must be
    # representable: its SVD is the start): their squared norms are far outside float64's range.
    for prev, tiny in ((None, 1e-170), (start, 1e-140)):
        base = partition_agreement(factors, p(updates), prev)
        assert any(lam > 0.0 for _, lam in base)
        for c in (1e150, tiny):
            moved = [LoRAFactors(A=f.A * c, B=f.B * c, scale=f.scale) for f in factors]
            got = partition_agreement(moved, p(updates), prev and LowRank(A=prev.A * c, B=prev.B * c))
            assert all(abs(a - b) < 1e-12 for (_, a), (_, b) in zip(got, base)), (got, base)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_client_gets_best_rank_r_approximation(seed, dtype):
    check_svd_hand_back("consensus", seed, random_ranks(seed), dtype)


def test_missing_directions_come_back_trainable():
    check_svd_hand_back_stays_trainable("consensus")


def test_it_always_reads_the_previous_update():
    assert method_named("consensus").wants_previous and method_named("consensus", strength=0.0).wants_previous


@pytest.mark.parametrize(
    "options, named",
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": "1"}, "strength"),
        ({"strength": True}, "strength"),
        ({"lone": "flexlora"}, "lone"),
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
