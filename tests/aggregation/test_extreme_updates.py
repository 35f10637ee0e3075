"""Extreme updates cannot break the server: every malformed or extreme update is refused with a
reason and the result is exactly the good-only aggregate (a hypothesis fuzz over every method),
example counts must be integers in (0, 10**12), an update far above the round's median norm is
refused with its ratio, and a round of uniformly huge updates still gives a finite update."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raflora import AGGREGATORS, ClientUpdate, LoRAFactors, NoValidUpdates, aggregate, init_a
from raflora.aggregation.numerics import log2_product_norm

from .reference import F64, assert_close, dense_global, random_updates, ref_delta

SHAPES = {"q_proj": (6, 5), "v_proj": (4, 7)}
MODULES = sorted(SHAPES)


def uploaded(method: str) -> str:
    return AGGREGATORS[method].uploads


def good_update(method: str, cid: str, rank: int, seed: int, dtype: torch.dtype) -> ClientUpdate:
    """Random factors whose uploaded norm is between 1 and 2 in every module: the honest clients
    of a round stay well inside the default bound of 10 times the median."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for module, (m, n) in SHAPES.items():
        A = init_a(module, rank, n, 0, F64) if method == "ffa" else torch.randn((rank, n), generator=g, dtype=F64)
        B = torch.randn((m, rank), generator=g, dtype=F64)
        scale = 0.5 + float(torch.rand((), generator=g, dtype=F64))
        target = 1.0 + float(torch.rand((), generator=g, dtype=F64))
        if uploaded(method) == "A":
            A = A * (target / float(torch.linalg.norm(A)))
        elif uploaded(method) == "B":
            B = B * (target / (scale * float(torch.linalg.norm(B))))
        else:
            B = B * (target / (scale * float(torch.linalg.norm(B @ A))))
        factors[module] = LoRAFactors(A=A.to(dtype), B=B.to(dtype), scale=scale)
    return ClientUpdate(cid, factors, 1 + seed % 97)


def scaled(update: ClientUpdate, cid: str, b: float = 1.0, a: float = 1.0, scale: float = 1.0) -> ClientUpdate:
    return ClientUpdate(
        cid,
        {m: LoRAFactors(A=f.A * a, B=f.B * b, scale=f.scale * scale) for m, f in update.factors.items()},
        update.num_examples,
    )


def with_count(update: ClientUpdate, cid: str, count) -> ClientUpdate:
    return ClientUpdate(cid, update.factors, count)


BAD_COUNTS = [10**400, 10**12, 2**64, 1e308, 1e12, 0.5, 1e-300, 0, -5, math.nan, math.inf, "12", True, None]
# A kind makes a bad update from a good template; the ones that pass the per-value checks and are
# caught by the norm bound (they are finite) are marked: they must stay a minority of the round.
NORM_KINDS = ("norm 1e6x", "factors 1e20", "factors 1e300", "scale 1e6")
VALUE_KINDS = ("count", "nan", "inf", "wrong shape", "missing module", "rank 0")


def bad_update(kind: str, template: ClientUpdate, cid: str, method: str, pick: int) -> ClientUpdate:
    f = template.factors["q_proj"]
    if kind == "norm 1e6x":
        part = uploaded(method)
        return scaled(template, cid, b=1e6 if "B" in part else 1.0, a=1e6 if part == "A" else 1.0)
    if kind == "factors 1e20":
        return scaled(template, cid, b=1e20, a=1e20)
    if kind == "factors 1e300":  # inf in float32: refused as non-finite there
        return scaled(template, cid, b=1e300, a=1e300)
    if kind == "scale 1e6":
        return scaled(template, cid, scale=1e6)
    if kind == "count":
        return with_count(template, cid, BAD_COUNTS[pick % len(BAD_COUNTS)])
    if kind in ("nan", "inf"):
        B = f.B.clone()
        B[pick % B.shape[0], 0] = math.nan if kind == "nan" else -math.inf
        return ClientUpdate(
            cid, {**template.factors, "q_proj": LoRAFactors(A=f.A, B=B, scale=f.scale)}, template.num_examples
        )
    if kind == "wrong shape":
        return ClientUpdate(cid, {**template.factors, "q_proj": LoRAFactors(A=f.A[:, :-1], B=f.B, scale=f.scale)}, 3)
    if kind == "missing module":
        return ClientUpdate(cid, {"q_proj": f}, 3)
    if kind == "rank 0":
        return ClientUpdate(cid, {**template.factors, "q_proj": LoRAFactors(A=f.A[:0], B=f.B[:, :0], scale=f.scale)}, 3)
    raise ValueError(kind)


def kinds_for(method: str) -> list[str]:
    # FedSA never uses a client's scale (only A travels), so a huge scale is no bad update there.
    return [k for k in NORM_KINDS + VALUE_KINDS if not (k == "scale 1e6" and uploaded(method) == "A")]


@st.composite
def rounds(draw, method: str):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n_good = draw(st.integers(3, 5))
    ranks = [4] * n_good if method == "fedit" else [draw(st.sampled_from([1, 2, 4])) for _ in range(n_good)]
    seed = draw(st.integers(0, 10_000))
    good = [good_update(method, f"g{i}", r, seed + i, dtype) for i, r in enumerate(ranks)]
    # Consecutive kinds from a drawn offset: every kind comes up about as often (sampled_from
    # favours the first ones when hypothesis runs derandomized).
    every = kinds_for(method)
    offset, size = draw(st.integers(0, len(every) - 1)), draw(st.integers(2, 6))
    kinds = [every[(offset + j * 3) % len(every)] for j in range(size)]
    # The norm bound needs an honest majority to fix the median: at most n_good of them.
    norm_kinds = [k for k in kinds if k in NORM_KINDS]
    kinds = [k for k in kinds if k not in NORM_KINDS] + norm_kinds[:n_good]
    bad = [
        bad_update(k, good[draw(st.integers(0, n_good - 1))], f"b{i}", method, draw(st.integers(0, 1000)))
        for i, k in enumerate(kinds)
    ]
    order = draw(st.permutations(range(len(good) + len(bad))))
    everyone = good + bad
    return good, bad, [everyone[i] for i in order]


def assert_same_result(res, clean) -> None:
    assert res.weights == clean.weights
    for m in res.modules:
        got, want = dense_global(res, m), dense_global(clean, m)
        assert torch.isfinite(got).all()
        assert torch.equal(got, want), m


# 10 methods x 40 rounds x 2-6 bad updates (4 on average): about 1,600 malformed updates.
@pytest.mark.parametrize("method", list(AGGREGATORS))
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_every_bad_update_is_refused_and_the_result_is_the_good_only_one(method, data):
    good, bad, mixed = data.draw(rounds(method))
    res = aggregate(method, mixed, modules=MODULES, shapes=SHAPES)
    refused = [cid for cid, _, _ in res.rejected]
    assert sorted(refused, key=str) == sorted((u.client_id for u in bad), key=str), res.rejected
    assert all(reason for _, _, reason in res.rejected)
    # The good ones in the order the round gave them: the same arithmetic, bit for bit.
    kept = [u for u in mixed if u.client_id in {g.client_id for g in good}]
    assert_same_result(res, aggregate(method, kept, modules=MODULES, shapes=SHAPES))


# -- example counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "count, shown",
    [
        (10**400, "about 401 digits"),
        (10**5000, "about 5001 digits"),
        (10**12, "1000000000000"),
        (1e308, "1e+308"),
        (0.5, "0.5"),
        (1e-300, "1e-300"),
        (math.inf, "inf"),
        ("7", "a str"),
    ],
    ids=["10**400", "10**5000", "10**12", "1e308", "0.5", "1e-300", "inf", "str"],
)
def test_example_count_must_be_an_integer_below_10_to_the_12(count, shown):
    good = random_updates(2, [2, 4, 3])
    res = aggregate("raflora", [with_count(good[0], "bad", count), *good])
    assert [(cid, m) for cid, m, _ in res.rejected] == [("bad", None)]
    reason = res.rejected[0][2]
    assert "num_examples must be a positive integer below 10**12" in reason and shown in reason


@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_two_updates_of_1e308_examples_are_both_refused(method):
    good = random_updates(5, [4, 4], frozen_a_seed=0)
    with pytest.raises(NoValidUpdates, match="2 refused"):
        aggregate(method, [with_count(u, u.client_id, 1e308) for u in good])


def test_integral_float_and_largest_count_are_accepted():
    good = random_updates(2, [2, 4, 3])
    counts = [7.0, 10**12 - 1, 3]
    res = aggregate("flexlora", [with_count(u, u.client_id, c) for u, c in zip(good, counts)])
    assert res.rejected == []
    total = 7 + (10**12 - 1) + 3
    assert res.weights == {"c0": 7 / total, "c1": (10**12 - 1) / total, "c2": 3 / total}


# -- the norm bound ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_norm_outlier_is_refused_with_its_ratio(method):
    ranks = [4] * 4 if method == "fedit" else [2, 4, 1, 2]
    good = [good_update(method, f"g{i}", r, 40 + i, F64) for i, r in enumerate(ranks)]
    part = uploaded(method)
    bad = scaled(good[1], "bad", b=1e6 if "B" in part else 1.0, a=1e6 if part == "A" else 1.0)
    res = aggregate(method, [good[0], bad, *good[1:]])
    assert [(cid, m) for cid, m, _ in res.rejected] == [("bad", "q_proj")]
    reason = res.rejected[0][2]
    # The norms of the good ones lie in [1, 2]: the ratio is between 5e5 and 2e6.
    ratio = float(reason.split(" is ")[1].split(" times")[0])
    assert 5e5 <= ratio <= 2e6 and "median" in reason and "max_norm_ratio 10" in reason
    assert_same_result(res, aggregate(method, good))


def test_ratio_is_measured_on_s_B_A_from_the_factors():
    good = [good_update("raflora", f"g{i}", 2, 7 + i, F64) for i in range(3)]
    f = good[0].factors["q_proj"]
    # The same product split differently (B x 1e3, A / 1e3) has the same norm: not an outlier.
    same = ClientUpdate("split", {**good[0].factors, "q_proj": LoRAFactors(A=f.A / 1e3, B=f.B * 1e3, scale=f.scale)}, 5)
    assert aggregate("raflora", [*good, same]).rejected == []
    assert math.isclose(
        2 ** log2_product_norm(f.B * 1e3, f.A / 1e3, f.scale),
        float(torch.linalg.norm(f.scale * f.B @ f.A)),
        rel_tol=1e-12,
    )


def test_ratio_zero_turns_the_bound_off_and_a_bound_is_a_bound():
    good = [good_update("zero_pad", f"g{i}", 2, i, F64) for i in range(3)]
    loud = scaled(good[0], "loud", b=20.0)
    assert [c for c, _, _ in aggregate("zero_pad", [*good, loud]).rejected] == ["loud"]
    assert aggregate("zero_pad", [*good, loud], max_norm_ratio=0).rejected == []
    assert aggregate("zero_pad", [*good, loud], max_norm_ratio=100).rejected == []


def test_fewer_than_three_updates_are_not_bounded():
    good = [good_update("flexlora", f"g{i}", 2, i, F64) for i in range(2)]
    res = aggregate("flexlora", [good[0], scaled(good[1], "loud", b=1e6)])
    assert res.rejected == []


@pytest.mark.parametrize("ratio", [-1, 0.5, math.inf, math.nan, "10", True])
def test_bad_ratio_is_an_option_error(ratio):
    with pytest.raises(ValueError, match="max_norm_ratio"):
        aggregate("raflora", random_updates(1, [2, 4, 2]), max_norm_ratio=ratio)


# -- numerical fallbacks -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_uniformly_huge_float32_round_gives_the_exact_finite_update(method):
    # --set train.lr=1e20: every client's factors x 1e20, so no norm stands out. float32 overflows
    # (LinAlgError in 8 of 10 methods before); the float64 retry is the exact aggregate.
    ranks = [4, 4, 4] if method == "fedit" else [2, 4, 3]
    base = random_updates(8, ranks, frozen_a_seed=0)
    huge = [scaled(u, u.client_id, b=1e20, a=1.0 if method == "ffa" else 1e20) for u in base]
    res = aggregate(method, [scaled(u, u.client_id) for u in _f32(huge)], seed=0)
    assert res.rejected == []
    for m in res.modules:
        got = dense_global(res, m)
        assert torch.isfinite(got).all()
        assert_close(got, ref_delta(method, huge, m), torch.float32, f"{method} {m}")
        assert torch.isfinite(res.singular_values(m)).all()
        for r in sorted(set(ranks)):
            f = res.client_factors(m, r, scale=1.0)
            assert torch.isfinite(f.A).all() and torch.isfinite(f.B).all()


def _f32(updates):
    return [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A.float(), B=f.B.float(), scale=f.scale) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in updates
    ]


@pytest.mark.parametrize("method", list(AGGREGATORS))
@pytest.mark.parametrize("size", [1e160, 1e300])
def test_round_beyond_float64_refuses_its_largest_updates_instead_of_crashing(method, size):
    # Products of 1e160 factors exceed float64; no bound applies (every norm alike), so the
    # fallback refuses the largest update until what is left fits, or nothing is left.
    ranks = [4, 4, 4] if method == "fedit" else [2, 4, 3]
    base = random_updates(9, ranks, frozen_a_seed=0)
    huge = [scaled(u, u.client_id, b=size, a=1.0 if method == "ffa" else size) for u in base]
    try:
        res = aggregate(method, huge)
    except NoValidUpdates as err:
        assert "largest norm" in str(err) or "overflows" in str(err)
        return
    for m in res.modules:
        assert torch.isfinite(dense_global(res, m)).all()
        assert torch.isfinite(res.singular_values(m)).all()


def test_refused_for_overflow_names_the_module_and_the_reason():
    # One sane update and two whose product overflows float64: with the bound off, the two are
    # refused by the fallback (largest first) and the sane one is the result.
    sane = random_updates(3, [2])[0]
    big = [scaled(random_updates(4 + i, [2])[0], f"big{i}", b=1e160, a=1e160) for i in range(2)]
    shapes = {m: f.shape for m, f in sane.factors.items()}
    big = [
        ClientUpdate(
            u.client_id,
            {
                m: LoRAFactors(
                    A=torch.ones((2, shapes[m][1]), dtype=F64) * 1e160,
                    B=torch.ones((shapes[m][0], 2), dtype=F64) * 1e160,
                    scale=1.0,
                )
                for m in shapes
            },
            1,
        )
        for u in big
    ]
    res = aggregate("flexlora", [sane, *big], max_norm_ratio=0)
    assert sorted(c for c, _, _ in res.rejected) == ["big0", "big1"]
    assert all("overflows in float64" in why and "largest norm" in why for _, _, why in res.rejected)
    assert_close(res.delta("q_proj"), ref_delta("flexlora", [sane], "q_proj"), F64)
