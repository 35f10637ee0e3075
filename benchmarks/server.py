"""Server round time: stacked aggregation vs the dense-SVD way, per method.

The round: ``aggregate`` plus ``client_factors`` for every client and module, at LLaMA-7B
shapes by default (64 modules of 4096 x 4096, ranks 64, 32, 16, 16, 8, 8, 4, 4, 4, 4).
The dense way (FlexLoRA's reference code) forms the ``m x n`` sum and runs a full
``torch.linalg.svd``; it takes tens of seconds per 4096 x 4096 module, so it is measured on a
few modules and compared per module (medians), next to the stacked path's per-module median
taken in the same process.

    python -m benchmarks.server            # LLaMA-7B shapes
    python -m benchmarks.server --quick    # 8 modules of 1024 x 1024

Rows: each method as ``aggregate`` runs by default (lazy, in the calling thread); for flexlora
and raflora also with ``workers=N`` (``--workers``, modules factorized N at a time, one intra-op
thread each); ``raflora:explicit-q`` is raflora's path before issue 4's fix
(:mod:`benchmarks.baseline`) and ``raflora:full-svd`` the one before the top-k fix.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from benchmarks.baseline import EXPLICIT_Q, STACKED_COPY
from benchmarks.common import (
    BEFORE,
    LLAMA_DIM,
    LLAMA_MODULES,
    LLAMA_RANKS,
    METHODS,
    machine_line,
    make_updates,
    markdown_table,
    median,
    repeat,
    server_round,
    set_threads,
    single_module,
    spread,
)
from raflora import aggregate
from raflora.aggregation.raflora import partition_weights


def dense_delta(updates, module: str, method: str) -> torch.Tensor:
    """The method's global update formed densely: ``sum_i s_i B_i diag(c_i) A_i``
    (``c_i = p_i`` for the FedAvg-weighted methods, raFLoRA's partition weights for raflora)."""
    total = float(sum(u.num_examples for u in updates))
    weights = [u.num_examples / total for u in updates]
    ranks = [u.factors[module].rank for u in updates]
    if method == "raflora":
        columns = partition_weights(ranks, weights, sorted(set(ranks)))
    else:
        columns = [torch.full((r,), p, dtype=torch.float64) for r, p in zip(ranks, weights)]
    delta = None
    for u, c in zip(updates, columns):
        f = u.factors[module]
        term = (f.B * (f.scale * c).to(f.B.dtype)) @ f.A
        delta = term if delta is None else delta.add_(term)
    return delta


def dense_svd_module(updates, module: str, method: str = "flexlora"):
    """FlexLoRA's dense server step for one module: dense sum, full SVD, each client's top-``r``
    (``S`` folded into ``B`` as the official code does). Returns ``(S, {client: (A, B)})``."""
    delta = dense_delta(updates, module, method)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    handed = {}
    for u in updates:
        f = u.factors[module]
        handed[u.client_id] = (Vh[: f.rank], U[:, : f.rank] * (S[: f.rank] / f.scale))
    return S, handed


def agreement(updates, module: str, method: str, dense_S: torch.Tensor, dense_handed) -> dict[str, float]:
    """How far the stacked path is from the dense one on ``module``: relative error of the
    singular values (the top ``R``) and of the largest-rank client's product ``s B A``."""
    one = single_module(updates, module)
    result = aggregate(method, one)
    S = result.singular_values(module)
    k = S.shape[0]
    sv_err = float((S - dense_S[:k]).abs().max() / dense_S[0])
    top = max(one, key=lambda u: u.factors[module].rank)
    f = top.factors[module]
    mine = result.client_factors(module, f.rank, f.scale)
    A_d, B_d = dense_handed[top.client_id]
    ref = f.scale * (B_d @ A_d)
    got = mine.scale * (mine.B @ mine.A)
    prod_err = float(torch.linalg.matrix_norm(got - ref) / torch.linalg.matrix_norm(ref))
    return {"sv_rel_err": sv_err, "client_rel_err": prod_err}


def floor(updates, workers: int = 2, repeats: int = 3) -> dict[str, float]:
    """The round's floor on this machine, measured: reading every uploaded factor once (one sum per
    tensor) plus the two QRs (``R`` only) of every module's stacked ``B`` and ``A^T``, the stacks
    formed beforehand and the QRs run ``workers`` modules at a time, as the round runs them. What
    no algorithm of this shape avoids; everything else in a round is on top."""
    from raflora.aggregation.workers import for_each_module

    modules = list(updates[0].factors)
    stacks = {
        m: (torch.cat([u.factors[m].B for u in updates], dim=1), torch.cat([u.factors[m].A for u in updates], dim=0))
        for m in modules
    }

    def read():
        for u in updates:
            for f in u.factors.values():
                f.A.sum(), f.B.sum()

    def qrs(m):
        B, A = stacks[m]
        torch.linalg.qr(B, mode="r"), torch.linalg.qr(A.T, mode="r")

    read_s = median(repeat(read, repeats))
    qr_s = median(repeat(lambda: for_each_module(qrs, modules, workers), repeats))
    return {"read_s": read_s, "qr_s": qr_s, "floor_s": read_s + qr_s, "workers": workers}


def run(
    dim: int = LLAMA_DIM,
    num_modules: int = LLAMA_MODULES,
    ranks: Sequence[int] = LLAMA_RANKS,
    methods: Sequence[str] = METHODS + ("raflora" + STACKED_COPY, "raflora" + EXPLICIT_Q, "raflora" + BEFORE),
    repeats: int = 3,
    per_module_samples: int = 8,
    dense_modules: int = 2,
    workers: Sequence[int] = (2,),
) -> dict:
    """Measure every method's round and per-module time and the dense-SVD per-module time.

    Returns ``{"rows": [...], "dense": {...}, "config": {...}}``; times in seconds.
    """
    updates = make_updates(ranks, num_modules, dim, dim)
    modules = list(updates[0].factors)
    sample = modules[: max(1, min(per_module_samples, num_modules))]
    dense_sample = modules[: max(1, min(dense_modules, num_modules))]

    # Dense way first (FlexLoRA's weighting; the SVD cost is the same for every method).
    dense_times, dense_cpu, form_times, dense_results = [], [], [], {}
    for module in dense_sample:
        start = time.perf_counter()
        delta = dense_delta(updates, module, "flexlora")
        form_times.append(time.perf_counter() - start)
        del delta
        start, start_cpu = time.perf_counter(), time.process_time()
        dense_results[module] = dense_svd_module(updates, module, "flexlora")
        dense_times.append(time.perf_counter() - start)
        dense_cpu.append(time.process_time() - start_cpu)
    dense_median = median(dense_times)

    variants = [(method, {}) for method in methods]
    for w in workers:  # only the SVD methods' rounds are exactly what workers= precomputes
        variants += [
            (method, {"workers": w})
            for method in methods
            if method in ("flexlora", "raflora", "raflora" + STACKED_COPY)
        ]
    rows = []
    for method, options in variants:
        per_module, per_module_cpu = [], []
        for module in sample:
            one = single_module(updates, module)
            cpu: list[float] = []
            per_module.append(
                median(repeat(lambda: server_round(method, one, keep=False, **options), repeats, cpu=cpu))
            )
            per_module_cpu.append(median(cpu))
        rows.append(
            {
                "method": method + "".join(f", {k}={v}" for k, v in options.items()),
                "per_module_ms": 1e3 * median(per_module),
                "per_module_cpu_ms": 1e3 * median(per_module_cpu),
                "speedup_vs_dense": dense_median / median(per_module),
                "speedup_vs_dense_cpu": median(dense_cpu) / median(per_module_cpu),
            }
        )
    # Whole rounds, interleaved (repetition 1 of every variant, then 2, ...), so a burst of load
    # from other processes spreads over the variants instead of landing on one; the per-module
    # runs above were the warm-up.
    round_times = [[] for _ in variants]
    round_cpu = [[] for _ in variants]
    for _ in range(repeats):
        for i, (method, options) in enumerate(variants):
            round_times[i] += repeat(
                lambda: server_round(method, updates, keep=False, **options), 1, warmup=0, cpu=round_cpu[i]
            )
    for row, (method, options), times, cpu in zip(rows, variants, round_times, round_cpu):
        row.update(round_s=median(times), round_spread=spread(times), round_cpu_s=median(cpu))
        if method in ("flexlora", "raflora") and not options:  # agreement: on the current path
            module = dense_sample[0]
            if method == "raflora":
                ref = dense_svd_module(updates, module, "raflora")
            else:
                ref = dense_results[module]
            row.update(agreement(updates, module, method, *ref))
    return {
        "rows": rows,
        "floor": floor(updates, max(workers) if workers else 1, repeats),
        "dense": {
            "per_module_s": dense_median,
            "per_module_cpu_s": median(dense_cpu),
            "spread": spread(dense_times),
            "form_only_ms": 1e3 * median(form_times),
            "modules_measured": len(dense_times),
            "round_estimate_s": dense_median * num_modules,
        },
        "config": {"dim": dim, "modules": num_modules, "ranks": list(ranks), "repeats": repeats},
    }


def table(out: dict) -> str:
    cfg, dense = out["config"], out["dense"]
    head = (
        f"Server round, {cfg['modules']} modules of {cfg['dim']} x {cfg['dim']}, ranks {cfg['ranks']}, "
        f"float32, median of {cfg['repeats']} (round = aggregate + client_factors for every client).\n"
        f"Dense way (dense sum + full torch.linalg.svd + truncation): {dense['per_module_s']:.3g} s per "
        f"module, {dense['per_module_cpu_s']:.3g} CPU s (median of {dense['modules_measured']} modules, range {dense['spread']} s; forming the "
        f"dense sum alone {dense['form_only_ms']:.3g} ms), i.e. ~{dense['round_estimate_s']:.0f} s per round.\n"
    )
    if "floor" in out:
        f = out["floor"]
        head += (
            f"Floor on this machine: reading every factor once {f['read_s']:.3g} s + the stacked QRs "
            f"({f['workers']} modules at a time) {f['qr_s']:.3g} s = {f['floor_s']:.3g} s.\n"
        )
    rows = [
        [
            r["method"],
            f"{r['round_s']:.3g}",
            r["round_spread"],
            f"{r['round_cpu_s']:.3g}",
            f"{r['per_module_ms']:.3g}",
            f"{r['per_module_cpu_ms']:.3g}",
            f"{r['speedup_vs_dense']:.0f}x",
            f"{r['speedup_vs_dense_cpu']:.0f}x",
            f"{r['sv_rel_err']:.1e}" if "sv_rel_err" in r else "-",
            f"{r['client_rel_err']:.1e}" if "client_rel_err" in r else "-",
        ]
        for r in out["rows"]
    ]
    headers = [
        "method",
        "round s (median)",
        "round range s",
        "round CPU s",
        "per module ms",
        "per module CPU ms",
        "speedup vs dense (wall)",
        "speedup vs dense (CPU)",
        "sigma rel err vs dense",
        "client B A rel err vs dense",
    ]
    return head + "\n" + markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 modules of 1024 x 1024")
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--modules", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-modules", type=int, default=2)
    parser.add_argument(
        "--methods",
        default=",".join(METHODS + ("raflora" + STACKED_COPY, "raflora" + EXPLICIT_Q, "raflora" + BEFORE)),
        help=f"'raflora{EXPLICIT_Q}' is raflora's path before issue 4's fix, "
        f"'raflora{BEFORE}' the one before the top-k fix",
    )
    parser.add_argument(
        "--workers", default="2", help="comma-separated worker counts for extra flexlora/raflora rows ('' for none)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    dim = args.dim or (1024 if args.quick else LLAMA_DIM)
    modules = args.modules or (8 if args.quick else LLAMA_MODULES)
    workers = [int(w) for w in args.workers.split(",") if w]
    out = run(
        dim,
        modules,
        LLAMA_RANKS,
        args.methods.split(","),
        args.repeats,
        dense_modules=args.dense_modules,
        workers=workers,
    )
    print(f"machine: {machine_line()}\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
