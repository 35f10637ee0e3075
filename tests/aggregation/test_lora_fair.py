"""lora_fair: FedAvg of the factors, B corrected on the server towards the ideal update."""

import itertools

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation.lora_fair import descent

from .checks import DTYPES, check_delta, random_ranks
from .reference import F64, assert_close, p, padded, product_sum, random_updates


def cosine(x, y):
    return float((x * y).sum() / (torch.linalg.norm(x) * torch.linalg.norm(y)))


@pytest.mark.parametrize("homogeneous", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_delta_matches_dense_reference(seed, dtype, homogeneous):
    updates = random_updates(seed, random_ranks(seed, homogeneous=homogeneous), dtype=dtype)
    check_delta("lora_fair", updates, dtype)


@pytest.mark.parametrize(
    "options", [{"lam": 0.0, "steps": 7}, {"lam": 1.0, "steps": 30, "step_size": 1.0}, {"steps": 300, "step_size": 0.7}]
)
def test_options_match_dense_reference(options):
    check_delta("lora_fair", random_updates(5, [3, 3, 3]), F64, **options)


@pytest.mark.parametrize("seed", range(3))
def test_no_steps_is_fedit(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    fair, fedit = aggregate("lora_fair", updates, steps=0), aggregate("fedit", updates)
    for m in fair.modules:
        assert torch.equal(fair.delta(m), fedit.delta(m))


@pytest.mark.parametrize("seed", range(3))
def test_correction_moves_towards_the_ideal_update_and_keeps_a(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    res = aggregate("lora_fair", updates)
    for m in res.modules:
        B0, A0 = padded(updates, m, p(updates), renormalise=False)
        ideal = product_sum(updates, m, p(updates))
        assert torch.equal(res.delta_factors(m).A, A0.to(res.delta_factors(m).A.dtype))
        assert cosine(res.delta(m), ideal) > cosine(B0 @ A0, ideal)


MIXES = [[4, 4, 4], [1, 1, 1, 3], [2, 8], [1, 8, 8, 1, 4], [3, 7, 1], [2, 8, 5, 1, 1], [5, 6, 1, 8, 4]]


@pytest.mark.parametrize("options", [{"lam": 0.01}, {"lam": 0.0}, {"lam": 1.0}, {"lam": 0.01, "step_size": 0.3}])
@pytest.mark.parametrize("seed", range(4))
def test_objective_never_increases(seed, options):
    # Each step is at most 1 / (a bound on the curvature along it), so it cannot overshoot. The
    # iterates come from the solver; the objective is evaluated here on the dense matrices;
    # zero-padded mixed ranks included.
    lam = options["lam"]
    for ranks in MIXES:
        updates = random_updates(seed, ranks)
        for m in updates[0].factors:
            B0, A0 = padded(updates, m, p(updates), renormalise=False)
            ideal = product_sum(updates, m, p(updates))
            size, norm = torch.linalg.norm(B0), float(torch.linalg.norm(ideal))
            iterates = descent(B0, A0, ideal @ A0.T, norm, lam, options.get("step_size", 1.0))
            trace = []
            for B in itertools.islice(iterates, 301):
                trace.append(1.0 - cosine(ideal, B @ A0) + lam * float(((B - B0) ** 2).sum() / size**2))
            assert len(trace) == 301
            rises = [(k, b - a) for k, (a, b) in enumerate(itertools.pairwise(trace)) if b > a + 1e-13]
            assert not rises, f"{ranks} {m}: the objective rises at steps {rises[:3]}"
            assert trace[0] < 1e-12 or trace[100] < trace[0] - 1e-6, (ranks, m, trace[0], trace[100])


def test_scale_moved_between_b_and_s_gives_the_same_update():
    # The case that the fixed step of an earlier solver amplified to a relative difference of
    # 1.9e-7 after 100 steps (test_properties.test_scale_invariance).
    updates = random_updates(1, [1, 1, 1, 3])
    moved = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A, B=f.B / 3.0, scale=f.scale * 3.0) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in updates
    ]
    for steps in (1, 10, 100, 1000):
        a, b = aggregate("lora_fair", updates, steps=steps), aggregate("lora_fair", moved, steps=steps)
        for m in a.modules:
            assert_close(b.delta(m), a.delta(m), F64, f"{steps} steps {m}")


def test_clients_sharing_a_need_no_correction():
    # Equal A: the product of averages is the average of products (cos = 1), so dB = 0.
    g = torch.Generator().manual_seed(0)
    A = torch.randn((3, 6), generator=g, dtype=F64)
    ups = [
        ClientUpdate(i, {"w": LoRAFactors(A=A, B=torch.randn((5, 3), generator=g, dtype=F64), scale=2.0)}, 1 + i)
        for i in range(3)
    ]
    assert_close(aggregate("lora_fair", ups).delta("w"), product_sum(ups, "w", p(ups)), F64, "shared A")


def test_client_starts_from_the_corrected_pair():
    updates = random_updates(2, [4, 4, 4])
    res = aggregate("lora_fair", updates)
    for m in res.modules:
        global_update = res.delta_factors(m)
        A, B = global_update.A, global_update.B
        f = res.client_factors(m, 4, scale=0.5)
        assert torch.equal(f.A, A) and torch.allclose(f.B * 0.5, B, rtol=1e-15, atol=0)
        assert_close(f.scale * f.B @ f.A, res.delta(m), F64, m)


@pytest.mark.parametrize(
    "options",
    [{"lam": -1.0}, {"lam": float("nan")}, {"steps": -1}, {"steps": 1.5}, {"step_size": 0.0}, {"step_size": 2.0}],
)
def test_bad_options_name_the_option(options):
    (name,) = options
    with pytest.raises(ValueError, match=f"lora_fair: {name}"):
        aggregate("lora_fair", random_updates(0, [2, 2]), **options)
