"""Every benchmark function runs at toy sizes and returns what its table needs.

No timing assertions: the numbers live in docs/performance.md. What is checked is structure,
and that the stacked path and the dense reference the server benchmark compares against agree.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import common, diagnostics, memory, profile_round, run_all, scaling, server, wire
from benchmarks.baseline import EXPLICIT_Q, STACKED_COPY
from raflora import aggregate


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_server_rows_and_dense_agreement():
    out = server.run(dim=48, num_modules=2, repeats=1, per_module_samples=1, dense_modules=1)
    assert [r["method"] for r in out["rows"]] == (
        list(common.METHODS)
        + ["raflora" + STACKED_COPY, "raflora" + EXPLICIT_Q, "raflora" + common.BEFORE]
        + ["raflora, workers=2", "flexlora, workers=2", "raflora" + STACKED_COPY + ", workers=2"]
    )
    for r in out["rows"]:
        assert r["round_s"] > 0 and r["per_module_ms"] > 0 and r["speedup_vs_dense"] > 0
    for r in out["rows"]:
        if r["method"] in ("raflora", "flexlora"):
            assert r["sv_rel_err"] < 1e-4
            assert r["client_rel_err"] < 1e-4
    assert out["dense"]["per_module_s"] > 0
    assert "| raflora |" in server.table(out)


@pytest.mark.parametrize("method", ["raflora", "flexlora", "florist", "flora", "zero_pad"])
def test_stacked_matches_dense_sum(method):
    updates = common.make_updates([8, 4, 2], 1, 40, 24, seed=3, dtype=torch.float64)
    module = next(iter(updates[0].factors))
    result = aggregate(method, updates)
    if method in ("raflora", "flexlora", "flora"):
        dense = server.dense_delta(updates, module, method)
        assert torch.allclose(result.delta(module), dense, atol=1e-12)
        S_dense = torch.linalg.svdvals(dense)
        S = result.singular_values(module)
        assert torch.allclose(S, S_dense[: S.shape[0]], atol=1e-10)
    result_round, kept = common.server_round(method, updates)
    assert set(kept) == {u.client_id for u in updates}
    assert all(kept[u.client_id][module].rank == u.factors[module].rank for u in updates)


def test_before_fix_path_hands_back_the_same_factors():
    updates = common.make_updates([8, 4, 2], 2, 30, 20, seed=2, dtype=torch.float64)
    _, now = common.server_round("raflora", updates)
    _, before = common.server_round("raflora" + common.BEFORE, updates)
    for cid, factors in now.items():
        for module, f in factors.items():
            g = before[cid][module]
            assert torch.allclose(f.B @ f.A, g.B @ g.A, atol=1e-12)


@pytest.mark.parametrize("method", ["raflora", "flexlora"])
def test_explicit_q_path_hands_back_the_same_factors(method):
    # The path before issue 4's fix (both Q formed) against today's, with and without workers.
    updates = common.make_updates([8, 4, 2], 3, 30, 20, seed=4, dtype=torch.float64)
    _, before = common.server_round(method + EXPLICIT_Q, updates)
    for options in ({}, {"workers": 2}):
        _, now = common.server_round(method, updates, **options)
        for cid, factors in now.items():
            for module, f in factors.items():
                g = before[cid][module]
                assert torch.allclose(f.B @ f.A, g.B @ g.A, atol=1e-12)
                assert torch.allclose(f.B.norm(), g.B.norm(), atol=1e-12)  # the same balanced split


def test_dense_svd_module_hands_back_best_rank_r():
    updates = common.make_updates([6, 3], 1, 20, 16, seed=1, dtype=torch.float64)
    module = next(iter(updates[0].factors))
    S, handed = server.dense_svd_module(updates, module, "flexlora")
    result = aggregate("flexlora", updates)
    for u in updates:
        f = u.factors[module]
        mine = result.client_factors(module, f.rank, f.scale)
        A_d, B_d = handed[u.client_id]
        assert torch.allclose(mine.B @ mine.A, B_d @ A_d, atol=1e-10)


def test_scaling_rows_and_fit():
    out = scaling.run(dim=32, client_counts=(3, 6), rank_sweep=(2, 4), repeats=1)
    assert [r["clients"] for r in out["clients"]] == [3, 6]
    assert [r["R"] for r in out["ranks"]] == [20, 40]
    assert out["clients"][0]["measured_ratio"] is None and out["clients"][1]["model_ratio"] > 1
    assert scaling.model_cost(32, 32, 100) == (64 * 100 * 32 + 32**3)
    assert "R = sum r_i" in scaling.table(out)


def test_wire_bytes_close_to_payload():
    out = wire.run(dim=32, num_modules=2, ranks=[4, 2])
    f32, bf16 = out["rows"]
    assert f32["payload_bytes"] == (4 + 2) * (32 + 32) * 2 * 4
    assert 0 < f32["overhead_bytes"] < 2000
    assert bf16["payload_bytes"] * 2 == f32["payload_bytes"]
    assert "bfloat16" in wire.table(out)


def test_memory_child_process():
    out = memory.run(
        dim=64, num_modules=2, methods=("raflora", "raflora, workers=2"), modes=("streamed",), dense=False, threads=1
    )
    assert [row["method"] for row in out["rows"]] == ["raflora", "raflora, workers=2"]
    for row in out["rows"]:
        assert row["probe"] in ("VmHWM", "ru_maxrss")
        assert row["uploaded_bytes"] == sum(common.LLAMA_RANKS) * (64 + 64) * 2 * 4
    assert "peak / uploaded" in memory.table(out)


def test_diagnostics_before_after():
    out = diagnostics.run(dim=32, num_modules=2, repeats=1)
    assert [r["method"] for r in out["rows"]] == ["flora", "zero_pad", "florist"]
    assert all(r["values_only_s"] > 0 and r["full_svd_s"] > 0 for r in out["rows"])
    assert "speedup" in diagnostics.table(out)


def test_run_all_knows_every_benchmark():
    assert {"server", "scaling", "wire", "memory", "diagnostics"} <= set(run_all.BENCHMARKS)


def test_profile_round_groups_the_ops():
    out = profile_round.run(["raflora" + EXPLICIT_Q, "raflora"], num_modules=2, dim=48)
    before, after = out["paths"]["raflora" + EXPLICIT_Q], out["paths"]["raflora"]
    qr = "QR of the stacks (explicit-q: geqrf + orgqr forming Q; now: R only)"
    assert before[qr] > 0 and after[qr] > 0
    # Before: both Q formed and multiplied; now the vectors come from two thin GEMMs.
    assert after["products (mm: the core, U_t S_t and V_t S_t)"] > 0
    assert "| total (profiled self CPU) |" in profile_round.table(out)


def test_the_stacked_copy_baseline_hands_back_the_same_factors_bit_for_bit():
    updates = common.make_updates([8, 4, 2], 2, 40, 24, seed=5)
    now, _ = common.server_round("raflora", updates)
    before, _ = common.server_round("raflora" + STACKED_COPY, updates)
    for module in now.modules:
        assert torch.equal(now.singular_values(module), before.singular_values(module))
        for u in updates:
            f = u.factors[module]
            a, b = now.client_factors(module, f.rank, f.scale), before.client_factors(module, f.rank, f.scale)
            assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)


def test_streamed_rows():
    from benchmarks import streamed

    out = streamed.run((6, 30), modules=2, dim=32, in_memory=6)
    assert [(r["clients"], r["mode"]) for r in out["rows"]] == [(6, "streamed"), (6, "in memory"), (30, "streamed")]
    assert out["rows"][2]["R"] == 140 and all(r["uploaded_bytes"] > 0 and r["seconds"] > 0 for r in out["rows"])
    assert "| 30 | 140 | streamed |" in streamed.table(out)


def test_round_parts_rows():
    from benchmarks import round_parts

    out = round_parts.main(["--quick"])
    assert [r[0] for r in out["stages"]][:3] == [
        "validation (check_updates)",
        "norm bound (norm_outliers)",
        "combine (combine_safely)",
    ]
    assert len(out["candidates"]) == 6
    # every way gets the singular values right to float32 rounding on these stacks
    assert all(float(row[3]) < 1e-4 for row in out["candidates"])
