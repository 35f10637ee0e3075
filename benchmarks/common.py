"""Shared pieces of the benchmarks: synthetic rounds, timing, the dense reference, tables.

Timing takes the median of several repetitions (wall clock, ``time.perf_counter``) after one
untimed warm-up; the machine these run on is shared, so a median is the least noisy summary
and every ratio is computed from numbers taken side by side in the same process.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from benchmarks.baseline import EXPLICIT_Q, STACKED_COPY, aggregate_explicit_q, aggregate_stacked_copy
from raflora import ClientUpdate, LoRAFactors, aggregate, lora_scale

LLAMA_RANKS = (64, 32, 16, 16, 8, 8, 4, 4, 4, 4)
LLAMA_DIM = 4096
LLAMA_MODULES = 64  # q_proj and v_proj of LLaMA-7B's 32 layers
METHODS = ("raflora", "flexlora", "florist", "zero_pad", "flora")
ALPHA = 16.0


def set_threads(n: int = 2) -> int:
    """Pin torch's intra-op threads (the target machine has 2 cores)."""
    torch.set_num_threads(n)
    return torch.get_num_threads()


def module_names(count: int) -> list[str]:
    """``count`` module names in PEFT's spelling, q and v alternating over layers."""
    return [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj" for i in range(count)]


def make_updates(
    ranks: Sequence[int],
    num_modules: int,
    m: int,
    n: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[ClientUpdate]:
    """One round of synthetic client updates: Gaussian ``A`` and ``B``, PEFT's ``alpha / r`` scale.

    Tensors are filled in place (no temporaries), so the process's resident memory after this
    call is the uploaded factors plus the interpreter: the memory benchmark relies on that.
    Example counts differ per client so the FedAvg weights are not all equal.
    """
    g = torch.Generator().manual_seed(seed)
    names = module_names(num_modules)
    updates = []
    for i, r in enumerate(ranks):
        factors = {}
        for name in names:
            A = torch.empty((r, n), dtype=dtype)
            A.normal_(generator=g).mul_(n**-0.5)
            B = torch.empty((m, r), dtype=dtype)
            B.normal_(generator=g).mul_(0.01)
            factors[name] = LoRAFactors(A=A, B=B, scale=lora_scale("lora", ALPHA, r))
        updates.append(ClientUpdate(f"client{i}", factors, 100 + 10 * i))
    return updates


def uploaded_bytes(updates: Sequence[ClientUpdate]) -> int:
    """Bytes of the uploaded factors as tensors in memory."""
    return sum(
        f.A.numel() * f.A.element_size() + f.B.numel() * f.B.element_size() for u in updates for f in u.factors.values()
    )


BEFORE = ":full-svd"  # suffix naming the path before the top-k fix (see server_round)


def server_round(method: str, updates: Sequence[ClientUpdate], keep: bool = True, **options):
    """What the server does each round: ``aggregate`` plus ``client_factors`` for every client
    and module. ``keep=False`` drops each client's factors once made (a server that encodes and
    sends them one by one); returns the result and the kept factors. ``options`` go to
    ``aggregate`` (``workers=2`` factorizes two modules at a time).

    Suffixes select earlier paths of an SVD method, for side-by-side timings:
    ``"raflora:explicit-q"`` (:data:`benchmarks.baseline.EXPLICIT_Q`) is the path before issue
    4's fix (both ``Q`` formed, ``isfinite`` checks; :mod:`benchmarks.baseline`);
    ``"raflora:stacked-copy"`` (:data:`benchmarks.baseline.STACKED_COPY`) holds every module's
    stacked factors, as before issue 13's memory fix;
    ``"raflora:full-svd"`` (:data:`BEFORE`) computes and caches the full thin SVD (all
    ``sum r_i`` singular vectors) of every module first, as before the top-k fix, and clients
    are handed their factors from it.
    """
    if method.endswith(EXPLICIT_Q):
        options.pop("workers", None)  # the path before the fix had no workers
        result = aggregate_explicit_q(method.removesuffix(EXPLICIT_Q), updates, **options)
    elif method.endswith(STACKED_COPY):
        result = aggregate_stacked_copy(method.removesuffix(STACKED_COPY), updates, **options)
    else:
        full = method.endswith(BEFORE)
        result = aggregate(method.removesuffix(BEFORE), updates, **options)
        if full:
            for module in result.modules:
                result.svd(module)
    out = {}
    for u in updates:
        mine = {}
        for module in result.modules:
            f = u.factors[module]
            mine[module] = result.client_factors(module, f.rank, f.scale)
        if keep:
            out[u.client_id] = mine
    return result, out


def split_variant(label: str) -> tuple[str, dict]:
    """``"raflora, workers=2"`` (a row label of the benchmarks) -> ``("raflora", {"workers": 2})``."""
    method, *options = [part.strip() for part in label.split(",")]
    return method, {key: int(value) for key, value in (option.split("=") for option in options)}


def single_module(updates: Sequence[ClientUpdate], module: str) -> list[ClientUpdate]:
    """The same round restricted to one module (for per-module timings)."""
    return [ClientUpdate(u.client_id, {module: u.factors[module]}, u.num_examples) for u in updates]


def repeat(fn: Callable[[], object], repeats: int, warmup: int = 1, cpu: list | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``cpu``: a list that receives the process CPU seconds (all threads) of each call; on a
    shared machine CPU time is far less sensitive to other people's jobs than wall time.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the repetitions, to show the noise next to a median."""
    return f"{min(values):.3g}-{max(values):.3g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x):
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def machine_line() -> str:
    info = machine()
    return ", ".join(f"{k}={v}" for k, v in info.items())
