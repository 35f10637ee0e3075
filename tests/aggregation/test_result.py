"""AggregationResult: scale resolution, module lookup, spectrum caching, per-module ranks, and
what each kind of result sends back."""

import pytest
import torch

from raflora import AGGREGATORS, ClientUpdate, aggregate

from .reference import F64, assert_close, assert_singular_values, dense_global, random_shapes, random_updates, ref_delta


def same_scale_updates():
    # Clients of one rank share a scale (alpha / r), as in a real federation.
    ranks = [2, 4, 4]
    return random_updates(8, ranks, scales=[8.0 / r for r in ranks])


@pytest.mark.parametrize("method", ["zero_pad", "flexlora", "raflora"])
def test_scale_defaults_to_the_one_used_by_that_rank(method):
    res = aggregate(method, same_scale_updates())
    implicit = res.client_factors("q_proj", 4)
    explicit = res.client_factors("q_proj", 4, scale=2.0)
    assert implicit.scale == 2.0
    assert torch.equal(implicit.A, explicit.A) and torch.equal(implicit.B, explicit.B)


def test_scale_must_be_given_when_ambiguous_or_unknown():
    mixed = random_updates(8, [4, 4], scales=[1.0, 2.0])
    res = aggregate("flexlora", mixed)
    with pytest.raises(ValueError, match=r"pass scale= for rank 4 \(clients used \[1.0, 2.0\]"):
        res.client_factors("q_proj", 4)
    with pytest.raises(ValueError, match="no client of that rank"):
        res.client_factors("q_proj", 8)


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        aggregate("zero_pad", same_scale_updates()).client_factors("q_proj", 0, scale=1.0)


def test_unknown_module_names_the_known_ones():
    res = aggregate("raflora", same_scale_updates())
    for call in (lambda m: dense_global(res, m), res.singular_values, lambda m: res.client_factors(m, 2, scale=1.0)):
        with pytest.raises(KeyError, match="q_proj"):
            call("k_proj")


def test_client_ranks_and_shapes():
    updates = same_scale_updates()
    res = aggregate("zero_pad", updates)
    assert res.client_ranks("v_proj") == {"c0": 2, "c1": 4, "c2": 4}
    for module, (m, n) in res.shapes.items():
        assert updates[0].factors[module].shape == (m, n)
        assert dense_global(res, module).shape == (m, n)


@pytest.mark.parametrize("method", ["flexlora", "raflora"])
def test_singular_values_agree_before_and_after_the_full_svd(method):
    updates = same_scale_updates()
    fast = aggregate(method, updates)
    slow = aggregate(method, updates)
    U, S, V = slow.svd("q_proj")
    assert torch.allclose(fast.singular_values("q_proj"), S, atol=1e-12)
    assert torch.equal(slow.singular_values("q_proj"), S)
    assert_close((U * S) @ V.T, ref_delta(method, updates, "q_proj"), F64, "svd reconstruction")


@pytest.mark.parametrize("method", ["zero_pad", "hetlora", "fedsa", "flora"])
def test_singular_values_without_vectors_match_dense(method):
    updates = same_scale_updates()
    res = aggregate(method, updates)
    for module in res.modules:
        assert_singular_values(res, module, ref_delta(method, updates, module), F64)


@pytest.mark.parametrize("method", ["zero_pad", "replication", "raflora", "flexlora", "flora", "fedsa", "hetlora"])
def test_ranks_may_differ_per_module(method):
    # One client is rank 4 on q_proj but rank 2 on v_proj; each module is aggregated on its own.
    shapes = random_shapes(2)
    base = random_updates(2, [4, 2, 4], shapes=shapes)
    other = random_updates(3, [2, 4, 2], shapes=shapes)
    updates = [
        ClientUpdate(b.client_id, {"q_proj": b.factors["q_proj"], "v_proj": o.factors["v_proj"]}, b.num_examples)
        for b, o in zip(base, other)
    ]
    res = aggregate(method, updates)
    assert res.rejected == []
    assert res.client_ranks("q_proj") == {"c0": 4, "c1": 2, "c2": 4}
    assert res.client_ranks("v_proj") == {"c0": 2, "c1": 4, "c2": 2}
    for module in res.modules:
        assert_close(dense_global(res, module), ref_delta(method, updates, module), F64, f"{method} {module}")


def test_values_on_the_wire_per_method():
    m, n, r = 10, 6, 3
    expected_up = {"ffa": r * m, "fedsa": r * n}
    for name, method in AGGREGATORS.items():
        assert method.upload_values(m, n, r) == expected_up.get(name, r * (m + n)), name
    updates = random_updates(1, [2, 3], shapes={"w": (m, n)}, frozen_a_seed=0)
    for name in ("zero_pad", "raflora", "flexlora"):
        assert aggregate(name, updates).download_values("w", r) == r * (m + n)


def test_options_are_discoverable():
    assert AGGREGATORS["raflora"].option_names() == ("rank_levels", "weighting", "empty_partition")
    assert AGGREGATORS["florist"].option_names() == ("tau",)
    assert AGGREGATORS["fedsa"].option_names() == ("sfed_alpha", "num_clients")
    assert AGGREGATORS["flexlora"].option_names() == ()
    for cls in AGGREGATORS.values():
        assert all(f.metadata.get("help") for f in cls.option_fields()), f"{cls.name}: every option has its help"


def test_only_merge_methods_merge_into_base():
    updates = random_updates(1, [2, 2], frozen_a_seed=0)
    merging = {name for name in AGGREGATORS if aggregate(name, updates).method.merges_into_base}
    assert merging == {"flora", "florist"}


class NoDense(torch.overrides.TorchFunctionMode):
    """Fails any torch call that produces an ``m x n`` (or larger) matrix."""

    def __init__(self, m: int, n: int):
        super().__init__()
        self.m, self.n = m, n

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-2] >= self.m and t.shape[-1] >= self.n:
                raise AssertionError(f"{func} formed a dense {tuple(t.shape)} matrix")
        return out


def test_no_dense_guard_catches_a_dense_product():
    updates = random_updates(0, [2], shapes={"w": (40, 30)})
    res = aggregate("flexlora", updates)
    with NoDense(40, 30), pytest.raises(AssertionError, match="dense"):
        dense_global(res, "w")


@pytest.mark.parametrize("method", sorted(AGGREGATORS))
def test_aggregation_never_forms_the_dense_update(method):
    # Ranks sum to 12, far below 40 x 30: any 40 x 30 tensor can only be the dense delta.
    m, n = 40, 30
    ranks = [4, 4, 4] if method == "fedit" else [2, 4, 6]
    updates = random_updates(5, ranks, shapes={"w": (m, n)}, frozen_a_seed=0)
    options = {"tau": 0.9} if method == "florist" else {}
    with NoDense(m, n):
        res = aggregate(method, updates, **options)
        res.singular_values("w")
        for r in (2, 6):
            res.client_factors("w", r, scale=1.0)
