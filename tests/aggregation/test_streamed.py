"""aggregate_files: the uploads read from raflora.wire files one module at a time give aggregate()'s
result for every method, with and without the previous update (bit for bit where the stack is kept;
to float32 rounding against the dense float64 reference where a module is made dense), with
aggregate()'s refusals: both run the method's same step functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation import AGGREGATORS, method_named
from raflora.aggregation.flexlora import FlexLoRA
from raflora.aggregation.result import SharedAResult
from raflora.aggregation.stacking import DenseUpdate
from raflora.aggregation.streamed import UploadFile, aggregate_files, write_upload
from raflora.aggregation.validate import NoValidUpdates
from raflora.lora import LowRank

from .reference import F64, assert_close, best_rank, random_updates, ref_delta

RANKS = [8, 4, 2, 2, 4, 8]
WIDE = {"q_proj": (64, 80), "v_proj": (80, 64)}  # R = 28: the stack is smaller than the matrix
WIDER = {"q_proj": (96, 80), "v_proj": (80, 96)}  # room for 12 more components
NARROW = {"q_proj": (6, 5), "v_proj": (5, 7)}  # R = 28 > the matrix: made dense


def files(tmp_path, updates):
    return [write_upload(tmp_path / f"{u.client_id}.safetensors", u) for u in updates]


def round_for(method: str, shapes=WIDE, seed: int = 3) -> tuple[list[int], list[ClientUpdate]]:
    """A round every method accepts whole: one rank for fedit, FFA's frozen ``A`` for ffa."""
    ranks = [4] * len(RANKS) if not AGGREGATORS[method].mixed_ranks else RANKS
    frozen = 0 if not AGGREGATORS[method].trains_a else None
    return ranks, random_updates(seed, ranks, shapes, dtype=torch.float32, frozen_a_seed=frozen)


def previous_update(shapes=WIDE, rank: int = 12, seed: int = 7) -> dict[str, LowRank]:
    g = torch.Generator().manual_seed(seed)
    return {
        m: LowRank(A=torch.randn(rank, n, generator=g), B=torch.randn(rows, rank, generator=g))
        for m, (rows, n) in shapes.items()
    }


def assert_same(streamed, direct, ranks) -> None:
    """Bit for bit: weights, refusals, spectra, the global update and what every rank starts from."""
    assert streamed.weights == direct.weights and streamed.modules == direct.modules
    assert {c: r for c, _, r in streamed.rejected} == {c: r for c, _, r in direct.rejected}
    for m in direct.modules:
        assert torch.equal(streamed.singular_values(m), direct.singular_values(m))
        if isinstance(direct, SharedAResult):  # fedsa: no global delta, the shared A is the global part
            assert torch.equal(streamed.shared_a(m), direct.shared_a(m))
        else:
            assert torch.equal(streamed.delta(m), direct.delta(m))
        for r in sorted(set(ranks)):
            got, want = streamed.client_factors(m, r, 1.0), direct.client_factors(m, r, 1.0)
            assert torch.equal(got.A, want.A) and torch.equal(got.B, want.B) and got.scale == want.scale


@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_the_same_numbers_as_aggregate(tmp_path, method):
    ranks, updates = round_for(method)
    assert_same(aggregate_files(method, files(tmp_path, updates)), aggregate(method, updates), ranks)


@pytest.mark.parametrize(
    "method, options", [("carryover", {}), ("consensus", {}), ("raflora", {"empty_partition": "keep"})]
)
def test_the_same_numbers_as_aggregate_with_the_previous_update(tmp_path, method, options):
    # every method that reads it: carryover carries its share; raflora under "keep" keeps the
    # components 9..12 that no update reached (R = 28 + 12 stays below the size where a module is
    # made dense)
    assert method_named(method, **options).wants_previous
    ranks, updates = round_for(method, WIDER)
    previous = previous_update(WIDER)
    streamed = aggregate_files(method, files(tmp_path, updates), previous=previous, top_rank=12, **options)
    direct = aggregate(method, updates, previous=previous, top_rank=12, **options)
    assert_same(streamed, direct, ranks)
    without = aggregate(method, updates, **options)
    assert all(not torch.equal(direct.delta(m), without.delta(m)) for m in WIDER), "previous is used"


@dataclass
class RefusesC2(FlexLoRA):
    """FlexLoRA with one more refusal step: the hook is written once, in the method."""

    def refusal_steps(self, seed, max_norm_ratio, workers=None):
        def no_c2(checked):
            return {i: (None, "c2 is out") for i, u in enumerate(checked.updates) if u.client_id == "c2"}

        return (no_c2, *super().refusal_steps(seed, max_norm_ratio, workers))


def test_a_new_refusal_step_is_run_by_both_paths(tmp_path):
    updates = random_updates(3, RANKS, WIDE, dtype=torch.float32)
    streamed = aggregate_files(RefusesC2(), files(tmp_path, updates))
    direct = aggregate(RefusesC2(), updates)
    assert [c for c, _, _ in direct.rejected] == ["c2"] and "c2" not in direct.weights
    assert_same(streamed, direct, RANKS)


def test_the_method_s_own_refusal_is_aggregate_s(tmp_path):
    ranks, updates = round_for("ffa")
    moved = {m: LoRAFactors(A=f.A + 0.5, B=f.B, scale=f.scale) for m, f in updates[2].factors.items()}
    updates[2] = ClientUpdate("c2", moved, updates[2].num_examples)
    streamed = aggregate_files("ffa", files(tmp_path, updates))
    direct = aggregate("ffa", updates)
    assert [c for c, _, _ in direct.rejected] == ["c2"] and "frozen" in direct.rejected[0][2]
    assert_same(streamed, direct, ranks)


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        ("flora", {"previous": previous_update()}, "does not read the previous global update"),
        ("raflora", {"max_norm_ratio": 0.5}, "max_norm_ratio"),
    ],
)
def test_bad_arguments_fail_alike_before_any_file_is_read(tmp_path, method, kwargs, match):
    never_read = [UploadFile("x", tmp_path / "absent.safetensors", 3)]
    with pytest.raises(ValueError, match=match):
        aggregate(method, random_updates(3, RANKS, WIDE), **kwargs)
    with pytest.raises(ValueError, match=match):
        aggregate_files(method, never_read, **kwargs)


@pytest.mark.parametrize("method", ["raflora", "flexlora", "flora"])
def test_a_module_whose_stack_outgrows_it_is_kept_dense_and_matches_the_float64_reference(tmp_path, method):
    updates = random_updates(4, RANKS, NARROW, dtype=torch.float32)
    result = aggregate_files(method, files(tmp_path, updates))
    for m, (rows, cols) in NARROW.items():
        assert isinstance(result.delta_factors(m), DenseUpdate)
        expected = ref_delta(method, random_updates(4, RANKS, NARROW, dtype=torch.float32), m)
        assert_close(result.delta(m).to(F64), expected, torch.float32, f"{method} {m}")
        want = torch.linalg.svdvals(expected)
        got = result.singular_values(m).to(F64)
        assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want[0])), (got, want)
        if method != "flora":  # SVD methods: a rank-r client starts from the best rank-r approximation
            for r in sorted(set(RANKS)):
                f = result.client_factors(m, r, 1.0)
                assert_close(
                    (f.scale * f.B @ f.A).to(F64),
                    best_rank(expected, min(r, rows, cols)),
                    torch.float32,
                    f"{method} {m} rank {r}",
                )


def test_refusals_are_aggregates_and_the_round_goes_on(tmp_path):
    updates = random_updates(5, RANKS, WIDE, dtype=torch.float32)
    bad = dict(updates[1].factors)
    f = bad["v_proj"]
    bad["v_proj"] = LoRAFactors(A=f.A, B=f.B.clone().index_fill_(0, torch.tensor([0]), math.nan), scale=f.scale)
    updates[1] = ClientUpdate("c1", bad, updates[1].num_examples)
    big = {m: LoRAFactors(A=f.A, B=f.B * 1e3, scale=f.scale) for m, f in updates[4].factors.items()}
    updates[4] = ClientUpdate("c4", big, updates[4].num_examples)
    uploads = files(tmp_path, updates)
    garbage = tmp_path / "c9.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    uploads.append(UploadFile("c9", garbage, 10))
    result = aggregate_files("raflora", uploads, rank_levels=[2, 4, 8])
    direct = aggregate("raflora", updates, rank_levels=[2, 4, 8])
    reasons = {cid: reason for cid, _, reason in result.rejected}
    assert set(reasons) == {"c1", "c4", "c9"}
    assert {cid: reason for cid, _, reason in direct.rejected} == {k: v for k, v in reasons.items() if k != "c9"}
    assert "NaN" in reasons["c1"] and "median" in reasons["c4"] and "cannot be read" in reasons["c9"]
    assert result.weights == direct.weights
    for m in WIDE:
        assert torch.equal(result.client_factors(m, 8, 1.0).B, direct.client_factors(m, 8, 1.0).B)


def test_no_readable_upload_is_no_valid_updates(tmp_path):
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(NoValidUpdates):
        aggregate_files("raflora", [UploadFile("x", junk, 3)])
