"""scripts/gpu_check.sh on the CPU: ``--device cpu --quick`` runs every check with the "GPU" side on
the CPU. The JSON line must hold every check, each passing, with the numbers it claims: the deltas
recomputed from its two sides, the text run equal to a run of the same config made here, the bf16
side really in bf16, and the server round's singular values equal to a dense float64 SVD."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from . import ROOT, load_script

gpu_check = load_script("gpu_check")
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
NAMES = ["device", "minilm_2_rounds", "smollm2_bf16_round", "server_round_llama7b"]


def run_script(*args: str) -> tuple[int, dict, str]:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r}; stderr: {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[0]), proc.stderr


@pytest.fixture(scope="module")
def quick():
    code, summary, stderr = run_script("--device", "cpu", "--quick", "--threads", "1")
    assert code == 0, json.dumps(summary, indent=1) + stderr[-2000:]
    return summary


def test_the_summary_has_every_check_in_order_and_all_pass(quick):
    assert [c["name"] for c in quick["checks"]] == NAMES
    assert quick["ok"] is True and quick["quick"] is True and quick["device"] == "cpu"
    for check in quick["checks"]:
        assert list(check)[:8] == ["name", "ok", "status", "reason", "gpu", "cpu", "tolerance", "delta"]
        assert list(check)[-1] == "seconds"
        assert check["ok"] is True and check["status"] == "ok" and check["reason"] is None, check
        assert check["seconds"] >= 0
    assert quick["total_seconds"] >= sum(c["seconds"] for c in quick["checks"]) - 1e-3
    device = quick["checks"][0]["gpu"]
    assert device["requested"] == "cpu" and device["torch"] == torch.__version__


@pytest.mark.parametrize("name", NAMES[1:])
def test_each_delta_is_recomputed_from_its_two_sides_and_within_its_tolerance(quick, name):
    check = next(c for c in quick["checks"] if c["name"] == name)
    assert set(check["delta"]) == set(check["tolerance"])
    for key, bound in check["tolerance"].items():
        gpu, cpu = check["gpu"][key], check["cpu"][key]
        expected = abs(gpu - cpu) / abs(cpu) if "rel" in bound else abs(gpu - cpu)
        assert math.isclose(check["delta"][key], expected, rel_tol=1e-12, abs_tol=1e-15)
        assert check["delta"][key] <= bound.get("rel", bound.get("abs"))


def test_the_text_check_ran_two_rounds_of_the_demo_config_on_both_sides(quick):
    from raflora.api import run

    check = next(c for c in quick["checks"] if c["name"] == "minilm_2_rounds")
    assert check["model"] == "tiny" and check["gpu"]["rounds"] == check["cpu"]["rounds"] == 2
    overrides = {**gpu_check.TEXT_SIZE, **gpu_check.TEXT_QUICK, "run.threads": 1, "run.device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        last = run(ROOT / "configs" / "bbc_minilm.toml", out=f"{tmp}/run", overrides=overrides).metrics[-1]
    for key in ("accuracy", "loss", "train_loss"):
        assert check["cpu"][key] == last[key]
        assert check["gpu"][key] == last[key]  # the "GPU" side is the CPU here: the same numbers


def test_the_reasoning_check_compares_bf16_with_float32(quick):
    check = next(c for c in quick["checks"] if c["name"] == "smollm2_bf16_round")
    assert check["gpu"]["precision"] == "bf16" and check["cpu"]["precision"] == "float32"
    assert check["gpu"]["rounds"] == check["cpu"]["rounds"] == 1
    assert check["gpu"]["loss"] != check["cpu"]["loss"]  # bf16 really ran: it rounds differently
    assert check["tolerance"] == {"train_loss": {"rel": 0.05}, "loss": {"rel": 0.05}}


def test_the_server_check_singular_values_match_a_dense_float64_svd(quick):
    from benchmarks.common import LLAMA_RANKS, make_updates
    from benchmarks.server import dense_delta
    from raflora import ClientUpdate, LoRAFactors

    check = next(c for c in quick["checks"] if c["name"] == "server_round_llama7b")
    shapes = check["shapes"]
    assert shapes == {"modules": 4, "dim": 256, "ranks": list(LLAMA_RANKS), "method": "raflora", "dtype": "float32"}
    drawn = make_updates(LLAMA_RANKS, 4, 256, 256)  # the script's float32 draws, summed in float64 here
    updates = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(f.A.double(), f.B.double(), f.scale) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in drawn
    ]
    module = next(iter(updates[0].factors))
    dense = torch.linalg.svdvals(dense_delta(updates, module, "raflora"))[:3]
    for side in ("gpu", "cpu"):
        got = torch.tensor(check[side]["top_sigma_first_module"], dtype=torch.float64)
        assert torch.allclose(got, dense, rtol=1e-5, atol=0), (side, got, dense)
        assert len(check[side]["times_s"]) == 3 and check[side]["round_s"] > 0
    assert check["delta"]["sv_rel_err"] == 0.0  # both sides on one CPU thread: the same kernels, the same bits


def test_a_spent_budget_skips_the_checks_not_started_and_exits_1():
    code, summary, _ = run_script(
        "--device", "cpu", "--quick", "--budget", "0", "--only", "minilm_2_rounds,server_round_llama7b"
    )
    assert code == 1 and summary["ok"] is False
    assert [c["name"] for c in summary["checks"]] == ["device", "minilm_2_rounds", "server_round_llama7b"]
    assert summary["checks"][0]["ok"] is True
    for check in summary["checks"][1:]:
        assert check["status"] == "skipped" and "time budget of 0 s spent" in check["reason"]
        assert check["ok"] is False and check["gpu"] is None and check["seconds"] == 0.0


def test_a_python_without_torch_is_reported_not_raised():
    blocked = (
        "import runpy, sys; sys.modules['torch'] = None; "  # import torch raises ImportError
        f"sys.argv = ['gpu_check.py', '--device', 'cpu']; runpy.run_path({str(ROOT / 'scripts' / 'gpu_check.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    device = summary["checks"][0]
    assert device["status"] == "missing" and device["reason"].startswith("torch is not installed in ")
    assert [c["status"] for c in summary["checks"][1:]] == ["skipped"] * 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_reported_not_raised():
    code, summary, _ = run_script("--device", "cuda", "--quick")
    assert code == 1 and summary["ok"] is False
    device = summary["checks"][0]
    assert device["status"] == "missing"
    assert "sees no GPU" in device["reason"] or "without CUDA (a CPU-only build)" in device["reason"]
    assert [c["status"] for c in summary["checks"][1:]] == ["skipped"] * 3
    assert all(c["reason"].startswith("no device: ") for c in summary["checks"][1:])


def test_compare_bounds_each_key_and_fails_a_missing_or_nan_side():
    tol = {"a": {"abs": 0.02}, "b": {"rel": 0.05}}
    assert gpu_check.compare({"a": 1.01, "b": 2.09}, {"a": 1.0, "b": 2.0}, tol)[0] is True
    ok, delta = gpu_check.compare({"a": 1.03, "b": 2.0}, {"a": 1.0, "b": 2.0}, tol)
    assert ok is False and math.isclose(delta["a"], 0.03) and delta["b"] == 0.0
    assert gpu_check.compare({"a": 1.0, "b": 2.11}, {"a": 1.0, "b": 2.0}, tol)[0] is False
    assert gpu_check.compare({"a": 1.0}, {"a": 1.0, "b": 2.0}, tol) == (False, {"a": 0.0, "b": None})
    assert gpu_check.compare({"a": float("nan"), "b": 2.0}, {"a": 1.0, "b": 2.0}, tol)[0] is False


def test_a_missing_package_is_named_with_its_pip_line():
    def lacking(args):
        gpu_check.need(["json", ("no_such_model_pkg", "model package", "no-such-model-pkg==1.0")])

    record = gpu_check.run_check("x", lacking, None)
    assert record["ok"] is False and record["status"] == "missing"
    assert (
        record["reason"]
        == "model package not installed: no_such_model_pkg (pip install --no-deps no-such-model-pkg==1.0)"
    )
