"""Where a server round's time goes: torch.profiler's self CPU time per aten op, grouped.

The round is :func:`benchmarks.common.server_round` (``aggregate`` plus ``client_factors`` for
every client and module) on the first ``--modules`` LLaMA-7B modules, in the calling thread
(lazy path; ``workers`` only spreads the same ops over threads). One untimed warm-up round,
then one profiled round per path. Shares are of the profiled self CPU time; ``ms per module``
divides by the number of modules.

    python -m benchmarks.profile_round --threads 1 --modules 16 --paths raflora:explicit-q,raflora
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    LLAMA_DIM,
    LLAMA_RANKS,
    machine_line,
    make_updates,
    markdown_table,
    server_round,
    set_threads,
)

# aten op -> what it does in the round (anything else: "other").
GROUPS = {
    "aten::linalg_qr": "QR of the stacks (explicit-q: geqrf + orgqr forming Q; now: R only)",
    "aten::geqrf": "QR of the stacks (explicit-q: geqrf + orgqr forming Q; now: R only)",
    "aten::mm": "products (mm: the core, U_t S_t and V_t S_t)",
    "aten::_linalg_svd": "core SVD (R x R)",
    "aten::isfinite": "validation (isfinite / aminmax)",
    "aten::abs": "validation (isfinite / aminmax)",
    "aten::ne": "validation (isfinite / aminmax)",
    "aten::eq": "validation (isfinite / aminmax)",
    "aten::all": "validation (isfinite / aminmax)",
    "aten::aminmax": "validation (isfinite / aminmax)",
    "aten::cat": "stacking (cat) and padding",
    "aten::mul": "scaling and hand-back (mul, div, copies)",
    "aten::div": "scaling and hand-back (mul, div, copies)",
    "aten::copy_": "scaling and hand-back (mul, div, copies)",
    "aten::sqrt": "scaling and hand-back (mul, div, copies)",
    "aten::triu": "scaling and hand-back (mul, div, copies)",
}


def profile_path(path: str, updates) -> dict[str, float]:
    """Self CPU seconds per group for one round of ``path``."""
    server_round(path, updates, keep=False)  # warm-up: MKL workspaces, first-call costs
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        server_round(path, updates, keep=False)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        groups[GROUPS.get(event.key, "other (views, allocation, small ops)")] += event.self_cpu_time_total / 1e6
    return dict(groups)


def run(paths: Sequence[str], num_modules: int = 16, dim: int = LLAMA_DIM) -> dict:
    updates = make_updates(LLAMA_RANKS, num_modules, dim, dim)
    return {"paths": {p: profile_path(p, updates) for p in paths}, "modules": num_modules, "dim": dim}


def table(out: dict) -> str:
    paths = list(out["paths"])
    groups = sorted(
        {g for p in paths for g in out["paths"][p]}, key=lambda g: -max(out["paths"][p].get(g, 0.0) for p in paths)
    )
    totals = {p: sum(out["paths"][p].values()) for p in paths}
    headers = ["where"] + [f"{p} share" for p in paths] + [f"{p} ms per module" for p in paths]
    rows = []
    for g in groups:
        shares = [f"{100 * out['paths'][p].get(g, 0.0) / totals[p]:.0f}%" for p in paths]
        per_module = [f"{1e3 * out['paths'][p].get(g, 0.0) / out['modules']:.1f}" for p in paths]
        rows.append([g] + shares + per_module)
    rows.append(
        ["total (profiled self CPU)"]
        + ["100%"] * len(paths)
        + [f"{1e3 * totals[p] / out['modules']:.1f}" for p in paths]
    )
    head = (
        f"Profile of one round, {out['modules']} modules of {out['dim']} x {out['dim']}, ranks "
        f"{list(LLAMA_RANKS)}, float32, {torch.get_num_threads()} intra-op thread(s).\n\n"
    )
    return head + markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="raflora:explicit-q,raflora")
    parser.add_argument("--modules", type=int, default=16)
    parser.add_argument("--dim", type=int, default=LLAMA_DIM)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 modules of 512 x 512")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    modules, dim = (4, 512) if args.quick else (args.modules, args.dim)
    out = run(args.paths.split(","), modules, dim)
    print(f"machine: {machine_line()}\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
