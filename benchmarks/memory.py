"""Peak extra memory of the server aggregation, per method, against the uploaded factors.

How it is measured, and why this way: torch's CPU tensors come from the C allocator (large
ones straight from ``mmap``), so ``tracemalloc`` does not see them and torch keeps no CPU
allocator statistics. What the operating system sees does count them: each measurement runs in
a fresh subprocess that builds the round's uploads (filled in place, no temporaries), reads its
resident set size, resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``, Linux
4.0+), runs the server round, and reads the peak (``VmHWM``). Peak minus the RSS before the
round is the extra memory the round needed at its worst moment. Where ``clear_refs`` cannot be
written, the child falls back to ``resource.getrusage(...).ru_maxrss`` (the process's lifetime
peak; the baseline is then the peak after building the uploads, which equals the RSS there
because nothing temporary was allocated) and says so in the ``probe`` column. The child runs
with ``MALLOC_MMAP_THRESHOLD_=131072`` so freed tensors leave the resident set at once.

Two ways of running the round: ``streamed`` makes each client's factors and drops them (a
server that encodes and sends as it goes); ``kept`` holds every client's factors at the end
(they alone are 1x the uploads for the SVD methods). The dense way (FlexLoRA's reference: dense
sum plus full SVD) is measured on one module against that module's uploads. Rows name the
method as the server benchmark does: ``raflora, workers=2`` factorizes modules two at a time,
``raflora:stacked-copy`` (and flexlora's) is the path before issue 13's memory fix, which held every
module's stacked factors for the whole round.

    python -m benchmarks.memory            # 64 modules of 4096 x 4096
    python -m benchmarks.memory --quick    # 8 modules of 512 x 512
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.baseline import STACKED_COPY
from benchmarks.common import (
    LLAMA_DIM,
    LLAMA_MODULES,
    LLAMA_RANKS,
    METHODS,
    machine_line,
    make_updates,
    markdown_table,
    server_round,
    set_threads,
    split_variant,
    status_kib,
    uploaded_bytes,
)

ROOT = Path(__file__).resolve().parent.parent


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _round(method: str, updates, mode: str):
    if method == "dense":
        from benchmarks.server import dense_svd_module

        return None, [dense_svd_module(updates, name, "flexlora") for name in updates[0].factors]
    method, options = split_variant(method)
    result, kept = server_round(method, updates, keep=(mode == "kept"), **options)
    for name in result.modules:  # the diagnostics' singular values are part of a round
        result.singular_values(name)
    return result, kept


def child(method: str, dim: int, modules: int, mode: str, threads: int) -> dict:
    """One measurement, in this (fresh) process. Returns bytes."""
    set_threads(threads)
    # Warm-up on a toy round: the first linalg call maps MKL's code and workspaces into the
    # process, tens of MiB that would otherwise be billed to the round.
    _round(method, make_updates(LLAMA_RANKS, 2, 128, 128), "kept")
    updates = make_updates(LLAMA_RANKS, modules, dim, dim)
    uploaded = uploaded_bytes(updates)
    gc.collect()
    before = status_kib("VmRSS") * 1024
    if _reset_peak():
        probe, baseline = "VmHWM", before
    else:
        probe, baseline = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result, kept = _round(method, updates, mode)
    if probe == "VmHWM":
        peak = status_kib("VmHWM") * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    after = status_kib("VmRSS") * 1024
    del result, kept
    return {
        "method": method,
        "mode": mode,
        "modules": modules,
        "dim": dim,
        "probe": probe,
        "uploaded_bytes": uploaded,
        "rss_before": before,
        "peak_extra": peak - baseline,
        "held_after": after - before,
    }


def measure(method: str, dim: int, modules: int, mode: str, threads: int = 2) -> dict:
    """Run :func:`child` in a fresh interpreter and return its numbers."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", method, str(dim), str(modules), mode, str(threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # A fixed mmap threshold: every block of 128 KiB or more is its own mapping, returned to
    # the OS when freed, so RSS follows live tensors (glibc's default threshold grows after
    # frees and would leave freed tensors resident, overstating what the round holds).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    dim: int = LLAMA_DIM,
    num_modules: int = LLAMA_MODULES,
    methods: Sequence[str] = METHODS + ("raflora, workers=2", "raflora" + STACKED_COPY, "flexlora" + STACKED_COPY),
    modes: Sequence[str] = ("streamed", "kept"),
    dense: bool = True,
    threads: int = 2,
) -> dict:
    rows = [measure(method, dim, num_modules, mode, threads) for method in methods for mode in modes]
    if dense:
        rows.append(measure("dense", dim, 1, "kept", threads))
    for r in rows:
        r["peak_ratio"] = r["peak_extra"] / r["uploaded_bytes"]
        r["held_ratio"] = r["held_after"] / r["uploaded_bytes"]
    return {"rows": rows, "config": {"dim": dim, "modules": num_modules, "ranks": list(LLAMA_RANKS)}}


def table(out: dict) -> str:
    cfg = out["config"]
    mib = 1024 * 1024
    headers = [
        "method",
        "client factors",
        "modules",
        "uploaded MiB",
        "peak extra MiB",
        "peak / uploaded",
        "held after MiB",
        "held / uploaded",
        "probe",
    ]
    rows = [
        [
            r["method"] if r["method"] != "dense" else "dense sum + full SVD (FlexLoRA reference)",
            r["mode"],
            r["modules"],
            f"{r['uploaded_bytes'] / mib:.1f}",
            f"{r['peak_extra'] / mib:.1f}",
            f"{r['peak_ratio']:.2f}x",
            f"{r['held_after'] / mib:.1f}",
            f"{r['held_ratio']:.2f}x",
            r["probe"],
        ]
        for r in out["rows"]
    ]
    return (
        f"Server memory per round, {cfg['dim']} x {cfg['dim']} modules, ranks {cfg['ranks']}, float32; "
        "peak extra = peak RSS during the round minus RSS before it (fresh process per row).\n\n"
        + markdown_table(headers, rows)
    )


def main(argv: Sequence[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        method, dim, modules, mode, threads = argv[1:6]
        print(json.dumps(child(method, int(dim), int(modules), mode, int(threads))))
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 modules of 512 x 512")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = run(512, 8, threads=args.threads) if args.quick else run(threads=args.threads)
    print(f"machine: {machine_line()}\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
