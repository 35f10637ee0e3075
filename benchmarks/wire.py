"""Bytes on the wire per round: the real safetensors serialisation against ``sum r_i (m + n)``.

Every client's upload is encoded with :func:`raflora.wire.encode_factors` (what the runtime
counts as ``bytes_up``) in float32 and in bfloat16; the table shows the payload the tensors
need, the measured bytes, and the safetensors header overhead (JSON names, shapes, offsets and
the per-module scale and rank metadata).

    python -m benchmarks.wire            # LLaMA-7B shapes: 64 modules of 4096 x 4096, 10 clients
    python -m benchmarks.wire --quick    # 8 modules of 256 x 256
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks.common import (
    LLAMA_DIM,
    LLAMA_MODULES,
    LLAMA_RANKS,
    machine_line,
    make_updates,
    markdown_table,
    set_threads,
)
from raflora import AGGREGATORS
from raflora.wire import decode_factors, encode_factors

BYTES_PER_VALUE = {"float32": 4, "bfloat16": 2}


def run(
    dim: int = LLAMA_DIM,
    num_modules: int = LLAMA_MODULES,
    ranks: Sequence[int] = LLAMA_RANKS,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    check_roundtrip: bool = True,
) -> dict:
    """Encode every client's upload once per transport dtype; one row per dtype."""
    updates = make_updates(ranks, num_modules, dim, dim)
    values = sum(AGGREGATORS["raflora"].upload_values(dim, dim, r) for r in ranks) * num_modules
    rows = []
    for dtype in dtypes:
        measured, seconds = 0, 0.0
        for u in updates:
            start = time.perf_counter()
            data = encode_factors(u.factors, dtype=dtype)
            seconds += time.perf_counter() - start
            measured += len(data)
            if check_roundtrip and u is updates[0]:
                decoded = decode_factors(data)
                name = next(iter(u.factors))
                assert decoded[name][3] == u.factors[name].rank
            del data
        payload = values * BYTES_PER_VALUE[dtype]
        rows.append(
            {
                "dtype": dtype,
                "values": values,
                "payload_bytes": payload,
                "measured_bytes": measured,
                "overhead_bytes": measured - payload,
                "overhead_pct": 100.0 * (measured - payload) / payload,
                "encode_s": seconds,
            }
        )
    base = rows[0]["measured_bytes"]
    for r in rows:
        r["vs_float32"] = r["measured_bytes"] / base
    return {"rows": rows, "config": {"dim": dim, "modules": num_modules, "ranks": list(ranks)}}


def table(out: dict) -> str:
    cfg = out["config"]
    headers = [
        "transport",
        "sum r_i (m+n) values",
        "payload bytes",
        "measured bytes",
        "header overhead",
        "overhead %",
        "vs float32",
        "encode s (all clients)",
    ]
    rows = [
        [
            r["dtype"],
            f"{r['values']:,}",
            f"{r['payload_bytes']:,}",
            f"{r['measured_bytes']:,}",
            f"{r['overhead_bytes']:,}",
            f"{r['overhead_pct']:.4f}",
            f"{r['vs_float32']:.3f}",
            f"{r['encode_s']:.3g}",
        ]
        for r in out["rows"]
    ]
    return (
        f"Upload bytes per round, {len(cfg['ranks'])} clients (ranks {cfg['ranks']}), {cfg['modules']} modules "
        f"of {cfg['dim']} x {cfg['dim']}, raflora.wire.encode_factors (safetensors).\n\n"
        + markdown_table(headers, rows)
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 modules of 256 x 256")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = run(256, 8) if args.quick else run()
    print(f"machine: {machine_line()}\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
