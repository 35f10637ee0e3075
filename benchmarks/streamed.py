"""Peak memory with the uploads streamed from disk: 100 and 1,000 clients on 64 modules.

A server with many clients reads each client's upload (a :mod:`raflora.wire` file, what crossed the
wire) one module at a time with :func:`raflora.aggregation.streamed.aggregate_files`, so its peak
memory should be one module's uploads and working set plus the result, not all uploads. Rows:
raflora with ranks cycling 2, 4, 8 over 64 modules of 1024 x 1024, for 100 clients (``R = sum r_i``
about 467 < 1024: each module's result is its stacked pair) and 1,000 clients (``R`` about 4,667 >
1024: each module is accumulated densely, 4 MiB); next to it, for 100 clients, the in-memory
``aggregate`` with every upload held. Each measurement runs in a fresh process (the peak-RSS probe
of :mod:`benchmarks.memory`); the round is the aggregation plus every client's ``client_factors``,
each dropped once made (a server that sends as it goes). The upload files are written by another
process first; reading them goes through the page cache, which is not this process's memory. One
intra-op thread (the times are there to show the price of reading from disk, not to be tuned).

    python -m benchmarks.streamed            # 100 and 1,000 clients, 64 modules of 1024 x 1024
    python -m benchmarks.streamed --quick    # 30 and 100 clients, 8 modules of 256 x 256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import machine_line, make_updates, markdown_table, set_threads, status_kib
from benchmarks.memory import _reset_peak
from raflora import aggregate
from raflora.aggregation.streamed import UploadFile, aggregate_files, write_upload

ROOT = Path(__file__).resolve().parent.parent
CYCLE = (2, 4, 8)


def ranks_of(clients: int) -> list[int]:
    return [CYCLE[i % len(CYCLE)] for i in range(clients)]


def upload_files(folder: Path, clients: int) -> list[UploadFile]:
    """Client ``i``'s upload file in ``folder``, with ``100 + 10 i`` examples (FedAvg weights differ)."""
    return [UploadFile(f"client{i}", folder / f"client{i}.safetensors", 100 + 10 * i) for i in range(clients)]


def write(folder: Path, clients: int, modules: int, dim: int) -> None:
    """Every client's upload as a file, one client in memory at a time."""
    for i, (upload, r) in enumerate(zip(upload_files(folder, clients), ranks_of(clients))):
        (u,) = make_updates([r], modules, dim, dim, seed=i)
        write_upload(upload.path, u)


def child(folder: str, clients: int, modules: int, dim: int, mode: str) -> dict:
    # One intra-op thread: this table is about memory, and two threads' LAPACK calls on these small
    # stacks stall for whole seconds when the other core is busy (docs/performance.md, Noise).
    set_threads(1)
    uploads = upload_files(Path(folder), clients)
    ranks = ranks_of(clients)
    aggregate_files("raflora", uploads[:3])  # warm-up: maps MKL's code and workspaces into the process
    held = [u.load(u.modules()) for u in uploads] if mode == "in memory" else None
    uploaded = sum(os.path.getsize(u.path) for u in uploads)
    gc.collect()
    before = status_kib("VmRSS") * 1024
    reset = _reset_peak()
    start = time.perf_counter()
    result = aggregate("raflora", held) if held is not None else aggregate_files("raflora", uploads)
    for name in result.modules:
        result.singular_values(name)
        for r in sorted(set(ranks)):
            result.client_factors(name, r)
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM") * 1024 if reset else None
    after = status_kib("VmRSS") * 1024
    return {
        "clients": clients,
        "mode": mode,
        "R": sum(ranks),
        "uploaded_bytes": uploaded,
        "peak_extra": None if peak is None else peak - before,
        "held_after": after - before,
        "seconds": seconds,
    }


def measure(folder: Path, clients: int, modules: int, dim: int, mode: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.streamed",
        "--child",
        str(folder),
        str(clients),
        str(modules),
        str(dim),
        mode,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # RSS follows live tensors (benchmarks.memory)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(counts: Sequence[int] = (100, 1000), modules: int = 64, dim: int = 1024, in_memory: int = 100) -> dict:
    rows = []
    for clients in counts:
        with tempfile.TemporaryDirectory(prefix="raflora-uploads-") as tmp:
            write(Path(tmp), clients, modules, dim)
            rows.append(measure(Path(tmp), clients, modules, dim, "streamed"))
            if clients <= in_memory:
                rows.append(measure(Path(tmp), clients, modules, dim, "in memory"))
    return {"rows": rows, "config": {"modules": modules, "dim": dim, "ranks": list(CYCLE)}}


def table(out: dict) -> str:
    mib = 1024 * 1024
    rows = []
    for r in out["rows"]:
        peak = r["peak_extra"]
        rows.append(
            [
                r["clients"],
                r["R"],
                r["mode"],
                f"{r['uploaded_bytes'] / mib:.0f}",
                "-" if peak is None else f"{peak / mib:.0f}",
                "-" if peak is None else f"{peak / r['uploaded_bytes']:.2f}x",
                f"{r['held_after'] / mib:.0f}",
                f"{r['seconds']:.1f}",
            ]
        )
    return markdown_table(
        [
            "clients",
            "R = sum r_i",
            "uploads",
            "uploaded MiB",
            "peak extra MiB",
            "peak / uploaded",
            "held after MiB",
            "round s",
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 and 100 clients, 8 modules of 256 x 256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder, clients, modules, dim, mode = args.child
        print(json.dumps(child(folder, int(clients), int(modules), int(dim), mode)))
        return {}
    out = run((30, 100), 8, 256, 30) if args.quick else run()
    cfg = out["config"]
    print(f"machine: {machine_line()}\n")
    print(f"raflora, {cfg['modules']} modules of {cfg['dim']} x {cfg['dim']}, ranks cycling {cfg['ranks']}:\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
