"""aggregate(..., workers=N): modules factorized ahead on a thread pool give the same numbers as
the lazy path, whatever the number of workers and however the threads are scheduled."""

import threading

import pytest
import torch

from raflora import AGGREGATORS, aggregate
from raflora.aggregation import result as result_module
from raflora.aggregation.workers import for_each_module

from .reference import F64, dense_global, random_updates

MODULES = tuple(f"layer{i}" for i in range(7))


def updates_for(method, dtype=F64, shape=(24, 18)):
    ranks = [4, 4, 4] if method == "fedit" else [6, 2, 4, 2]
    return random_updates(5, ranks, shapes={m: shape for m in MODULES}, dtype=dtype, frozen_a_seed=0)


def snapshot(res, ranks=(2, 4, 6, 9)):
    """Everything a round reads from a result, per module."""
    out = {}
    for m in res.modules:
        out[m] = [dense_global(res, m), res.singular_values(m)]
        for r in ranks:
            f = res.client_factors(m, r, scale=1.5)
            out[m] += [f.A, f.B]
    return out


def options(method):
    return {"tau": 0.9} if method == "florist" else {}


@pytest.mark.parametrize("method", sorted(AGGREGATORS))
def test_workers_give_bit_identical_results(method):
    # One intra-op thread everywhere (the aggregation tests' fixture, and each worker's own), so
    # every module runs the same kernels on the same data whichever thread picks it up.
    updates = updates_for(method)
    lazy = snapshot(aggregate(method, updates, **options(method)))
    for workers in (1, 2, 3, 8, 8, 8):
        eager = snapshot(aggregate(method, updates, workers=workers, **options(method)))
        for m in MODULES:
            for got, want in zip(eager[m], lazy[m]):
                assert torch.equal(got, want), (method, workers, m)


@pytest.mark.parametrize("method", ["raflora", "flexlora"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (F64, 1e-12)])
def test_workers_match_a_multithreaded_caller(method, dtype, tol):
    # The caller runs on 2 intra-op threads, the workers on 1 each: kernels may sum in another
    # order, so the results agree to rounding rather than bit for bit.
    updates = updates_for(method, dtype, shape=(300, 200))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lazy = snapshot(aggregate(method, updates), ranks=(4, 6))
        eager = snapshot(aggregate(method, updates, workers=2), ranks=(4, 6))
    finally:
        torch.set_num_threads(before)
    for m in MODULES:
        delta, S, *factors = eager[m]
        ref_delta, ref_S, *ref_factors = lazy[m]
        assert torch.equal(delta, ref_delta)  # stacking runs in the caller either way
        assert float((S - ref_S).abs().max()) <= tol * float(ref_S[0])
        for (A, B), (ref_A, ref_B) in zip(zip(factors[::2], factors[1::2]), zip(ref_factors[::2], ref_factors[1::2])):
            product, ref = (B @ A).to(F64), (ref_B @ ref_A).to(F64)
            assert float(torch.linalg.norm(product - ref)) <= tol * float(torch.linalg.norm(ref))


def test_precomputed_modules_are_not_factorized_again(monkeypatch):
    res = aggregate("raflora", updates_for("raflora"), workers=2)

    def refuse(*args, **kwargs):
        raise AssertionError("factorized again after precompute")

    monkeypatch.setattr(result_module, "stable_top_svd", refuse)
    monkeypatch.setattr(result_module, "stable_svd", refuse)
    for m in MODULES:
        res.singular_values(m)
        for r in (2, 4, 6):
            res.client_factors(m, r, scale=1.0)


def test_precompute_returns_the_result():
    res = aggregate("flora", updates_for("flora"))
    assert res.precompute(workers=3) is res


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(workers):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        aggregate("raflora", updates_for("raflora"), workers=workers)


def test_pool_puts_the_callers_thread_count_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        for_each_module(lambda m: seen.append(torch.get_num_threads()), MODULES, workers=3)
        assert seen == [1] * len(MODULES)
        assert torch.get_num_threads() == 2
        # torch starts later threads with the last count set anywhere: it must be the caller's again.
        later = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]
    finally:
        torch.set_num_threads(before)


def test_an_error_in_one_module_is_raised_after_the_others_ran():
    done = []

    def work(module):
        if module == "layer3":
            raise RuntimeError("boom in layer3")
        done.append(module)

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom in layer3"):
        for_each_module(work, MODULES, workers=2)
    assert sorted(done) == sorted(set(MODULES) - {"layer3"})
    assert torch.get_num_threads() == before


def test_workers_refuse_the_same_norm_outliers():
    # The norms of several modules are computed on the pool; the refusals (which client, which
    # module, which reason) are the lazy path's.
    updates = updates_for("raflora")
    big = updates[2]
    updates[2] = type(big)(
        big.client_id,
        {m: type(f)(f.A, f.B * (1e3 if m == "layer5" else 1.0), f.scale) for m, f in big.factors.items()},
        big.num_examples,
    )
    lazy = aggregate("raflora", updates)
    assert [(cid, m) for cid, m, _ in lazy.rejected] == [(updates[2].client_id, "layer5")]
    for workers in (2, 3):
        assert aggregate("raflora", updates, workers=workers).rejected == lazy.rejected
