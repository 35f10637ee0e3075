"""aggregate_files: the uploads read from raflora.wire files one module at a time give aggregate()'s
result (bit for bit where the stack is kept; to float32 rounding against the dense float64
reference where a module is made dense), with aggregate()'s refusals."""

from __future__ import annotations

import math

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation.stacking import DenseUpdate
from raflora.aggregation.streamed import UploadFile, aggregate_files, write_upload
from raflora.aggregation.validate import NoValidUpdates

from .reference import F64, assert_close, best_rank, random_updates, ref_delta

RANKS = [8, 4, 2, 2, 4, 8]
WIDE = {"q_proj": (64, 80), "v_proj": (80, 64)}  # R = 28: the stack is smaller than the matrix
NARROW = {"q_proj": (6, 5), "v_proj": (5, 7)}  # R = 28 > the matrix: made dense


def files(tmp_path, updates):
    return [write_upload(tmp_path / f"{u.client_id}.safetensors", u) for u in updates]


@pytest.mark.parametrize(
    "method", ["raflora", "flexlora", "carryover", "flora", "florist", "zero_pad", "hetlora", "replication"]
)
def test_the_same_numbers_as_aggregate(tmp_path, method):
    updates = random_updates(3, RANKS, WIDE, dtype=torch.float32)
    streamed = aggregate_files(method, files(tmp_path, updates))
    direct = aggregate(method, updates)
    assert streamed.weights == direct.weights and streamed.modules == direct.modules
    for m in WIDE:
        assert torch.equal(streamed.singular_values(m), direct.singular_values(m))
        assert torch.equal(streamed.delta(m), direct.delta(m))
        for r in sorted(set(RANKS)):
            got, want = streamed.client_factors(m, r, 1.0), direct.client_factors(m, r, 1.0)
            assert torch.equal(got.A, want.A) and torch.equal(got.B, want.B) and got.scale == want.scale


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
