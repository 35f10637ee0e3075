"""Where one LLaMA-7B module's server work goes, and what a Gram/Cholesky QR would change.

Part 1, the round's stages per module (one intra-op thread, thread CPU time, the minimum of 3):
validation, the norm bound, the combine, the module's factorization (``singular_values``: the
stack, its two QRs, the core SVD, the thin products) and the hand-backs of all clients.

Part 2, the factorization's candidates on one module's stacks (``4096 x 160``): the time of the
Householder QR (``R`` only, what the round uses) against the Gram product ``B^T B`` in float32 and
in float64, and the accuracy of the singular values each way against the dense float64 SVD of
``B A`` (largest error over the 160 values, relative to ``sigma_1``, and over the top 64 relative
to each value). The Gram way takes the square roots of the two Gram matrices (Cholesky) and the
same small core SVD.

    python -m benchmarks.round_parts            # 16 LLaMA-7B modules (~1 minute)
    python -m benchmarks.round_parts --quick    # 2 modules of 512 x 512
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from benchmarks.common import LLAMA_DIM, LLAMA_RANKS, machine_line, make_updates, markdown_table, set_threads
from raflora import aggregate
from raflora.aggregation import method_named
from raflora.aggregation.validate import check_updates, norm_outliers
from raflora.lora import product_top_svd


def least_cpu_ms(fn, repeats: int = 3) -> float:
    best = None
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        spent = time.thread_time() - start
        best = spent if best is None else min(best, spent)
    return 1e3 * best


def stages(updates, modules: int) -> list[list]:
    method = method_named("raflora")
    checked = check_updates(updates)
    rows = [
        ["validation (check_updates)", least_cpu_ms(lambda: check_updates(updates)) / modules],
        ["norm bound (norm_outliers)", least_cpu_ms(lambda: norm_outliers(checked, "AB", 10.0)) / modules],
        ["combine (combine_safely)", least_cpu_ms(lambda: method.combine_safely(checked, 0)) / modules],
    ]
    factorize, hand_back = [], []
    for _ in range(3):
        result = aggregate("raflora", updates)
        start = time.thread_time()
        for m in result.modules:
            result.singular_values(m)
        factorize.append(time.thread_time() - start)
        start = time.thread_time()
        for m in result.modules:
            for u in updates:
                result.client_factors(m, u.factors[m].rank, u.factors[m].scale)
        hand_back.append(time.thread_time() - start)
    rows.append(["factorization (stack, 2 QRs, core SVD, products)", 1e3 * min(factorize) / modules])
    rows.append([f"hand-backs ({len(updates)} clients)", 1e3 * min(hand_back) / modules])
    return [[name, f"{ms:.2f}"] for name, ms in rows]


def square_root(gram: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R^T R = gram`` (Cholesky; eigh when Cholesky fails)."""
    lower, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return lower.T
    values, vectors = torch.linalg.eigh(gram)
    return values.clamp_min(0).sqrt()[:, None] * vectors.T


def gram_singular_values(B: torch.Tensor, A: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b, a = B.to(dtype), A.to(dtype)
    core = square_root(b.T @ b) @ square_root(a @ a.T).T
    return torch.linalg.svdvals(core)


def shared_start(updates, module: str, change: float = 0.01, seed: int = 1):
    """The stacks of a real round's shape: every client's factors are the same global directions
    (the first ``r_i`` of one rank-``r_max`` pair, as SVD re-allocation hands them out) plus its own
    change of relative size ``change``: near-duplicate columns, the ill-conditioned case."""
    g = torch.Generator().manual_seed(seed)
    first = updates[0].factors[module]
    r_max = max(u.factors[module].rank for u in updates)
    B0 = torch.randn((first.B.shape[0], r_max), generator=g) * 0.01
    A0 = torch.randn((r_max, first.A.shape[1]), generator=g) / first.A.shape[1] ** 0.5
    Bs, As = [], []
    for u in updates:
        r, s = u.factors[module].rank, u.factors[module].scale
        Bs.append(B0[:, :r] * (1 + change * torch.randn((B0.shape[0], r), generator=g)))
        As.append((A0[:r] * (1 + change * torch.randn((r, A0.shape[1]), generator=g))) * s)
    return torch.cat(Bs, dim=1), torch.cat(As, dim=0)


def candidates(updates, module: str, top: int, shared: bool = False) -> list[list]:
    if shared:
        B, A = shared_start(updates, module)
    else:
        B = torch.cat([u.factors[module].B for u in updates], dim=1)
        A = torch.cat([u.factors[module].A * u.factors[module].scale for u in updates], dim=0)
    exact = torch.linalg.svdvals(B.double() @ A.double())[: B.shape[1]]

    def errors(S: torch.Tensor) -> tuple[str, str]:
        S = S.double()[: exact.shape[0]]
        return (
            f"{float((S - exact).abs().max() / exact[0]):.1e}",
            f"{float(((S[:top] - exact[:top]).abs() / exact[:top]).max()):.1e}",
        )

    qr_S = product_top_svd(B, A, top)[1]
    case = "near-duplicate columns" if shared else "independent Gaussian factors"
    rows = [
        [
            case,
            "Householder QR, R only (the round's)",
            f"{least_cpu_ms(lambda: torch.linalg.qr(B, mode='r'), 7):.2f}",
            *errors(qr_S),
        ]
    ]
    for name, dtype in (("Gram B^T B, float32", torch.float32), ("Gram B^T B, float64", torch.float64)):
        b = B.to(dtype)
        rows.append([case, name, f"{least_cpu_ms(lambda: b.T @ b, 7):.2f}", *errors(gram_singular_values(B, A, dtype))])
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 modules of 512 x 512")
    parser.add_argument("--threads", type=int, default=1, help="ignored: one intra-op thread, as the workers use")
    args = parser.parse_args(argv)
    set_threads(1)
    dim, modules = (512, 2) if args.quick else (LLAMA_DIM, 16)
    updates = make_updates(LLAMA_RANKS, modules, dim, dim)
    stage_rows = stages(updates, modules)
    module = next(iter(updates[0].factors))
    candidate_rows = candidates(updates, module, max(LLAMA_RANKS)) + candidates(updates, module, max(LLAMA_RANKS), True)
    print(f"machine: {machine_line()}\n")
    print(
        f"Per module, {modules} modules of {dim} x {dim}, ranks {list(LLAMA_RANKS)}, one thread, "
        "thread CPU ms (minimum of 3):\n"
    )
    print(markdown_table(["stage", "ms per module"], stage_rows))
    print(
        f"\nOne module's {dim} x {sum(LLAMA_RANKS)} stack: time of the orthogonalisation step (minimum of 7) and "
        "the singular values' error against the dense float64 SVD:\n"
    )
    print(
        markdown_table(
            ["stacks", "way", "ms", "max error / sigma_1", f"max relative error, top {max(LLAMA_RANKS)}"],
            candidate_rows,
        )
    )
    return {"stages": stage_rows, "candidates": candidate_rows}


if __name__ == "__main__":
    main()
