"""Run every benchmark (server and client side) and print markdown tables.

    python -m benchmarks.run_all            # LLaMA-7B shapes and the real MiniLM runs
    python -m benchmarks.run_all --quick    # small shapes and the tiny encoder (a few minutes)

Server side: server, scaling, wire, memory, streamed, diagnostics. Client side (the embedded
runtime): client_overhead (the demo task), client_overhead_vision and client_overhead_reasoning (the
same comparison on EfficientNet-Lite0 and SmolLM2), client_memory, transport. See
docs/performance.md for the times.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks import (
    client_memory,
    client_overhead,
    diagnostics,
    memory,
    round_parts,
    scaling,
    server,
    streamed,
    transport,
    wire,
)
from benchmarks.common import machine_line, set_threads

# name -> (module, the flags its main gets besides --quick and --threads)
BENCHMARKS = {
    "server": (server, []),
    "scaling": (scaling, []),
    "wire": (wire, []),
    "memory": (memory, []),
    "streamed": (streamed, []),
    "round_parts": (round_parts, []),
    "diagnostics": (diagnostics, []),
    "client_overhead": (client_overhead, []),
    "client_overhead_vision": (client_overhead, ["--task", "vision"]),
    "client_overhead_reasoning": (client_overhead, ["--task", "reasoning"]),
    "client_memory": (client_memory, []),
    "transport": (transport, []),
}
# what `make bench` runs (under 30 minutes); streamed and round_parts run on request (--only)
DEFAULT = [name for name in BENCHMARKS if name not in ("streamed", "round_parts")]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes for every benchmark")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help="comma-separated subset (default: all but "
        "streamed, which writes 2.4 GB of uploads and takes ~5 minutes, and round_parts)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(f"# raflora benchmarks\n\nmachine: {machine_line()}\n")
    results = {}
    for name in args.only.split(","):
        module, extra = BENCHMARKS[name]
        start = time.perf_counter()
        flags = (["--quick"] if args.quick else []) + ["--threads", str(args.threads)] + extra
        print(f"## {name}\n")
        results[name] = module.main(flags)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)\n", flush=True)
    return results


if __name__ == "__main__":
    main()
