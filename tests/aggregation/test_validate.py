"""Malformed updates are refused with a reason naming client and module; the round goes on
with the rest, and its result is exactly the aggregation of the remaining updates."""

import math

import pytest
import torch

from raflora import AGGREGATORS, ClientUpdate, LoRAFactors, NoValidUpdates, aggregate

from .reference import F64, assert_close, dense_global, random_updates, ref_delta


def good_updates(method: str) -> list[ClientUpdate]:
    # fedit needs one rank; ffa needs the shared frozen A (valid input for every other method).
    ranks = [4, 4, 4] if method == "fedit" else [2, 4, 3]
    return random_updates(11, ranks, frozen_a_seed=0)


def with_module(template: ClientUpdate, module: str, value) -> ClientUpdate:
    return ClientUpdate("bad", {**template.factors, module: value}, template.num_examples)


def poisoned(tensor: torch.Tensor, value: float) -> torch.Tensor:
    out = tensor.clone()
    out[0, -1] = value
    return out


def bad_cases(template: ClientUpdate) -> dict[str, tuple[object, str | None, str]]:
    """name -> (bad update, module the rejection must name, word the reason must contain)."""
    f = template.factors["q_proj"]
    n = template.num_examples
    return {
        "wrong shape": (
            with_module(template, "q_proj", LoRAFactors(A=torch.cat([f.A, f.A[:, :1]], 1), B=f.B, scale=f.scale)),
            "q_proj",
            "shape",
        ),
        "rank mismatch": (
            with_module(template, "q_proj", LoRAFactors(A=f.A[:-1], B=f.B, scale=f.scale)),
            "q_proj",
            "rank mismatch",
        ),
        "nan in A": (
            with_module(template, "q_proj", LoRAFactors(A=poisoned(f.A, math.nan), B=f.B, scale=f.scale)),
            "q_proj",
            "NaN",
        ),
        "inf in B": (
            with_module(
                template,
                "v_proj",
                LoRAFactors(
                    A=template.factors["v_proj"].A, B=poisoned(template.factors["v_proj"].B, math.inf), scale=f.scale
                ),
            ),
            "v_proj",
            "Inf",
        ),
        "missing module": (ClientUpdate("bad", {"q_proj": f}, n), "v_proj", "missing"),
        "unknown module": (with_module(template, "k_proj", f), "k_proj", "unknown"),
        "zero examples": (ClientUpdate("bad", template.factors, 0), None, "num_examples"),
        "negative examples": (ClientUpdate("bad", template.factors, -3), None, "num_examples"),
        "nan examples": (ClientUpdate("bad", template.factors, math.nan), None, "num_examples"),
        "non-tensor A": (
            with_module(template, "q_proj", LoRAFactors(A=f.A.tolist(), B=f.B, scale=f.scale)),
            "q_proj",
            "tensor",
        ),
        "not LoRAFactors": (with_module(template, "q_proj", (f.A, f.B)), "q_proj", "LoRAFactors"),
        "integer factors": (
            with_module(template, "q_proj", LoRAFactors(A=f.A.long(), B=f.B.long(), scale=f.scale)),
            "q_proj",
            "floating",
        ),
        "zero rank": (
            with_module(template, "q_proj", LoRAFactors(A=f.A[:0], B=f.B[:, :0], scale=f.scale)),
            "q_proj",
            "rank must be",
        ),
        "1-D factor": (with_module(template, "q_proj", LoRAFactors(A=f.A[0], B=f.B, scale=f.scale)), "q_proj", "2-D"),
        "zero scale": (with_module(template, "q_proj", LoRAFactors(A=f.A, B=f.B, scale=0.0)), "q_proj", "scale"),
        "nan scale": (with_module(template, "q_proj", LoRAFactors(A=f.A, B=f.B, scale=math.nan)), "q_proj", "scale"),
        "empty factors": (ClientUpdate("bad", {}, n), None, "no factors"),
    }


CASES = list(bad_cases(good_updates("raflora")[1]))


@pytest.mark.parametrize("method", list(AGGREGATORS))
@pytest.mark.parametrize("case", CASES)
def test_bad_update_is_refused_and_the_rest_aggregated(method, case):
    good = good_updates(method)
    bad, module, word = bad_cases(good[1])[case]
    res = aggregate(method, [good[0], bad, *good[1:]])
    assert len(res.rejected) == 1, res.rejected
    cid, where, reason = res.rejected[0]
    assert cid == "bad" and where == module
    assert "'bad'" in reason and word in reason
    if module is not None:
        assert repr(module) in reason
    clean = aggregate(method, good)
    assert res.weights == clean.weights
    for m in res.modules:
        assert torch.equal(dense_global(res, m), dense_global(clean, m))


@pytest.mark.parametrize("method", ["zero_pad", "raflora", "flexlora"])
def test_result_of_remaining_matches_dense_reference(method):
    good = good_updates(method)
    bad, _, _ = bad_cases(good[0])["nan in A"]
    res = aggregate(method, [bad, *good])
    for m in res.modules:
        assert_close(dense_global(res, m), ref_delta(method, good, m), F64)


def test_duplicate_id_keeps_the_first():
    good = good_updates("raflora")
    copy = ClientUpdate(good[0].client_id, good[2].factors, 50)
    res = aggregate("raflora", [*good, copy])
    assert res.rejected == [("c0", None, res.rejected[0][2])]
    assert "'c0'" in res.rejected[0][2] and "duplicate" in res.rejected[0][2]
    clean = aggregate("raflora", good)
    for m in res.modules:
        assert torch.equal(dense_global(res, m), dense_global(clean, m))


def test_non_update_item_is_refused():
    good = good_updates("flexlora")
    res = aggregate("flexlora", [*good, {"q_proj": None}])
    assert res.rejected[0][:2] == (None, None) and "ClientUpdate" in res.rejected[0][2]
    assert set(res.weights) == {"c0", "c1", "c2"}


def test_several_bad_updates_are_all_reported():
    good = good_updates("zero_pad")
    cases = bad_cases(good[0])
    bads = [
        ClientUpdate(f"bad{i}", cases[name][0].factors, cases[name][0].num_examples)
        for i, name in enumerate(["nan in A", "missing module", "zero examples"])
    ]
    res = aggregate("zero_pad", [*bads, *good])
    assert sorted(cid for cid, _, _ in res.rejected) == ["bad0", "bad1", "bad2"]
    assert set(res.weights) == {"c0", "c1", "c2"}


def test_no_updates_at_all():
    with pytest.raises(NoValidUpdates, match="no client updates") as info:
        aggregate("raflora", [])
    assert isinstance(info.value, ValueError)


def test_nothing_valid_left_names_every_reason():
    good = good_updates("raflora")[0]
    cases = bad_cases(good)
    with pytest.raises(NoValidUpdates) as info:
        aggregate("raflora", [cases["nan in A"][0], ClientUpdate("other", good.factors, -1)])
    message = str(info.value)
    assert "2 refused" in message and "NaN" in message and "'other'" in message


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown aggregation method 'fedavg'.*raflora"):
        aggregate("fedavg", good_updates("raflora"))


@pytest.mark.parametrize("method, option", [("flexlora", "tau"), ("raflora", "tau"), ("florist", "rank_levels")])
def test_unknown_option(method, option):
    with pytest.raises(TypeError, match=option):
        aggregate(method, good_updates(method), **{option: 1})


def test_explicit_modules_and_shapes_override_the_majority():
    good = good_updates("flexlora")
    # The only client matching the given shape is c0; the majority is refused.
    m, n = good[1].factors["q_proj"].shape
    narrow = {"q_proj": LoRAFactors(A=good[0].factors["q_proj"].A, B=good[0].factors["q_proj"].B, scale=1.0)}
    res = aggregate("flexlora", [ClientUpdate("only", narrow, 1), *good], modules=["q_proj"], shapes={"q_proj": (m, n)})
    refused = {cid: reason for cid, _, reason in res.rejected}
    assert set(refused) == {"c0", "c1", "c2"} and all("v_proj" in r for r in refused.values())
    assert res.modules == ("q_proj",) and set(res.weights) == {"only"}


def test_mixed_dtypes_aggregate_in_float64():
    good = good_updates("flexlora")
    half = ClientUpdate(
        "f32", {m: LoRAFactors(A=f.A.float(), B=f.B.float(), scale=f.scale) for m, f in good[0].factors.items()}, 10
    )
    res = aggregate("flexlora", [half, *good[1:]])
    assert dense_global(res, "q_proj").dtype == F64


def test_numpy_counts_and_scales_are_accepted():
    # Counts from np.bincount and scales computed with numpy are ordinary numbers to a user.
    np = pytest.importorskip("numpy")
    good = good_updates("raflora")
    converted = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A, B=f.B, scale=np.float32(f.scale)) for m, f in u.factors.items()},
            np.int64(u.num_examples),
        )
        for u in good
    ]
    res = aggregate("raflora", converted)
    assert res.rejected == []
    for m in res.modules:
        assert_close(dense_global(res, m), ref_delta("raflora", good, m), torch.float32)


def test_unhashable_client_id_is_refused_not_a_crash():
    good = good_updates("flexlora")
    res = aggregate("flexlora", [ClientUpdate(["a", "list"], good[0].factors, 3), *good])
    assert res.rejected[0][:2] == (None, None) and "must be a non-empty string or an integer" in res.rejected[0][2]
    assert "['a', 'list']" in res.rejected[0][2]
    assert set(res.weights) == {"c0", "c1", "c2"}


def test_low_precision_inputs_aggregate_in_float32():
    good = good_updates("zero_pad")
    half = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A.bfloat16(), B=f.B.bfloat16(), scale=f.scale) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in good
    ]
    res = aggregate("zero_pad", half)
    assert dense_global(res, "q_proj").dtype == torch.float32
    # bf16 keeps ~3 significant digits; the aggregate must still be the same update.
    assert_close(dense_global(res, "q_proj"), ref_delta("zero_pad", half, "q_proj"), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [(0, 0), (3, 17), (-1, -1)])
def test_any_non_finite_value_is_refused(dtype, value, where):
    # The check is one min/max pass: it must catch NaN and both infinities anywhere, in every dtype.
    good = random_updates(4, [4, 2], shapes={"w": (8, 40)})
    f = good[0].factors["w"]
    for name in ("A", "B"):
        A, B = f.A.to(dtype).clone(), f.B.to(dtype).clone()
        target = A if name == "A" else B
        target[where[0] % target.shape[0], where[1] % target.shape[1]] = value
        bad = ClientUpdate("bad", {"w": LoRAFactors(A=A, B=B, scale=f.scale)}, 5)
        res = aggregate("raflora", [bad, good[1]])
        assert [(cid, m) for cid, m, _ in res.rejected] == [("bad", "w")], name
        assert "NaN or Inf" in res.rejected[0][2]
