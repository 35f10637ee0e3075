"""Dense float64 references for every aggregation method, written from the formulas alone.

Nothing here calls raflora's math (no ``stack_factors``, ``average_factors``, ``product_svd``,
``partition_weights``...): each reference builds the dense ``m x n`` update with plain torch
loops, so a bug shared by the library's helpers cannot hide in the expected value. The only
library names used are the data classes (to build inputs) and ``init_a`` (FFA's frozen ``A`` is
*defined* as that matrix).
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from raflora import ClientUpdate, LoRAFactors, init_a

F64 = torch.float64
TRUNCATION = ("fedit", "zero_pad", "hetlora", "replication", "ffa", "lora_fair")
SVD = ("flexlora", "raflora", "rb_lora", "consensus")
MERGE = ("flora", "florist")
METHODS = TRUNCATION + SVD + MERGE + ("fedsa",)
# Each dtype's error budget from the issue: norm(diff) / norm(reference).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}


# -- inputs ------------------------------------------------------------------------------------
def random_shapes(seed: int, modules=("q_proj", "v_proj")) -> dict[str, tuple[int, int]]:
    rng = random.Random(seed)
    return {module: (rng.randint(3, 20), rng.randint(3, 20)) for module in modules}


def random_updates(
    seed: int,
    ranks,
    shapes: dict[str, tuple[int, int]] | None = None,
    dtype: torch.dtype = F64,
    num_examples=None,
    scales=None,
    frozen_a_seed: int | None = None,
) -> list[ClientUpdate]:
    """One update per rank with random factors, scales and example counts.

    ``frozen_a_seed``: give every client FFA's shared frozen ``A`` instead of a random one.
    """
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or random_shapes(seed)
    counts = num_examples or [rng.randint(1, 100) for _ in ranks]
    scale_of = scales or [rng.uniform(0.25, 4.0) for _ in ranks]
    updates = []
    for i, r in enumerate(ranks):
        factors = {}
        for module, (m, n) in shapes.items():
            if frozen_a_seed is None:
                A = torch.randn((r, n), generator=g, dtype=F64)
            else:
                A = init_a(module, r, n, frozen_a_seed, F64)
            B = torch.randn((m, r), generator=g, dtype=F64)
            factors[module] = LoRAFactors(A=A.to(dtype), B=B.to(dtype), scale=scale_of[i])
        updates.append(ClientUpdate(f"c{i}", factors, counts[i]))
    return updates


# -- small dense helpers -------------------------------------------------------------------------
def p(updates) -> list[float]:
    total = sum(u.num_examples for u in updates)
    return [u.num_examples / total for u in updates]


def factors64(update: ClientUpdate, module: str) -> tuple[Tensor, Tensor, float]:
    f = update.factors[module]
    return f.A.to(F64), f.B.to(F64), float(f.scale)


def rel_err(actual: Tensor, expected: Tensor) -> float:
    expected = expected.to(F64)
    diff = torch.linalg.norm(actual.to(F64) - expected)
    size = torch.linalg.norm(expected)
    return float(diff / size) if size > 0 else float(diff)


def best_rank(delta: Tensor, r: int) -> Tensor:
    """Eckart-Young: the best rank-``r`` approximation from a dense SVD."""
    U, S, Vh = torch.linalg.svd(delta.to(F64), full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def padded(updates, module: str, weights, renormalise: bool) -> tuple[Tensor, Tensor]:
    """Index-by-index average of ``(s_i B_i, A_i)``: component ``j`` over the clients having it,
    divided by their total weight when ``renormalise`` (replication) else by 1 (zero padding)."""
    r_max = max(u.factors[module].rank for u in updates)
    m, n = update_shape(updates[0], module)
    B = torch.zeros((m, r_max), dtype=F64)
    A = torch.zeros((r_max, n), dtype=F64)
    for j in range(r_max):
        have = [(u, w) for u, w in zip(updates, weights) if u.factors[module].rank > j]
        denominator = sum(w for _, w in have) if renormalise else 1.0
        for u, w in have:
            a, b, s = factors64(u, module)
            B[:, j] += w * s * b[:, j] / denominator
            A[j] += w * a[j] / denominator
    return B, A


def update_shape(update: ClientUpdate, module: str) -> tuple[int, int]:
    f = update.factors[module]
    return int(f.B.shape[0]), int(f.A.shape[1])


# -- the references ------------------------------------------------------------------------------
def product_sum(updates, module: str, weights) -> Tensor:
    """``sum_i w_i s_i B_i A_i`` (FLoRA, FlexLoRA)."""
    total = 0
    for u, w in zip(updates, weights):
        a, b, s = factors64(u, module)
        total = total + w * s * (b @ a)
    return total


def ref_factors(method: str, updates, module: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The averaged ``(B, A)`` (scales folded into ``B``) of a factor-averaging method."""
    weights = p(updates)
    if method == "fedit":
        m, n = update_shape(updates[0], module)
        r = updates[0].factors[module].rank
        B = torch.zeros((m, r), dtype=F64)
        A = torch.zeros((r, n), dtype=F64)
        for u, w in zip(updates, weights):
            a, b, s = factors64(u, module)
            B += w * s * b
            A += w * a
        return B, A
    if method == "zero_pad":
        return padded(updates, module, weights, renormalise=False)
    if method == "replication":
        return padded(updates, module, weights, renormalise=True)
    if method == "hetlora":
        norms = []
        for u in updates:
            a, b, s = factors64(u, module)
            norms.append(float(torch.linalg.norm(s * (b @ a))))
        total = sum(norms)
        het = [x / total for x in norms] if total > 0 else weights
        return padded(updates, module, het, renormalise=False)
    if method == "ffa":
        r_max = max(u.factors[module].rank for u in updates)
        m, n = update_shape(updates[0], module)
        B, _ = padded(updates, module, weights, renormalise=False)
        return B, init_a(module, r_max, n, seed, F64)
    raise ValueError(method)


def ref_raflora(updates, module: str, levels=None) -> Tensor:
    """Partition by partition: ``P_k = (l_{k-1}, l_k]``, contributors ``r_i >= l_k``, each
    weighted by its share of the contributors' ``p``."""
    weights = p(updates)
    ranks = [u.factors[module].rank for u in updates]
    levels = sorted(set(levels if levels is not None else ranks))
    m, n = update_shape(updates[0], module)
    delta = torch.zeros((m, n), dtype=F64)
    low = 0
    for level in levels:
        members = [(u, w) for u, w, r in zip(updates, weights, ranks) if r >= level]
        reach = sum(w for _, w in members)
        for u, w in members:
            a, b, s = factors64(u, module)
            delta += (w / reach) * s * (b[:, low:level] @ a[low:level])
        low = level
    return delta


def ref_consensus(
    updates, module: str, strength: float = 1.0, lone: str = "carryover", previous: Tensor | None = None, top=None
) -> tuple[Tensor, list[float]]:
    """``(delta, [lambda_k])``: the previous update's top ``top`` directions from its dense SVD
    (none: 0), each partition's start ``start_k``, uploads ``U_ik`` and changes ``C_ik = U_ik -
    start_k`` formed densely; mean ``M_k``, spread ``V_k = sum q_i ||C_ik - M_k||^2``, effective count
    ``n_k``, ``lambda_k = max(0, 1 - V_k / ((n_k - 1) ||M_k||^2))`` (a lone client's partition: 0, or
    the one below's with ``lone = "borrow"``), and ``delta = sum_k [(1 - c_k) start_k + sum_i
    (p_i c_k / P_k) U_ik] + the directions beyond the largest rank``, ``c_k = P_k + (1 - P_k) lambda_k``."""
    weights = p(updates)
    ranks = [u.factors[module].rank for u in updates]
    m, n = update_shape(updates[0], module)
    levels = sorted(set(ranks))
    directions = []  # sigma_j u_j v_j^T, j = 1 .. top
    if previous is not None:
        U, S, Vh = torch.linalg.svd(previous.to(F64), full_matrices=False)
        top = levels[-1] if top is None else top
        directions = [S[j] * torch.outer(U[:, j], Vh[j]) for j in range(min(top, S.shape[0]))]

    def start(low, high):
        return sum(directions[low:high], torch.zeros((m, n), dtype=F64))

    delta = start(levels[-1], len(directions))
    lambdas, low, below = [], 0, 0.0
    for level in levels:
        members = [(u, w) for u, w, r in zip(updates, weights, ranks) if r >= level]
        reach = sum(w for _, w in members)
        begin = start(low, level)
        uploads = []
        for u, w in members:
            a, b, s = factors64(u, module)
            uploads.append((w, s * (b[:, low:level] @ a[low:level])))
        if len(members) >= 2:
            changes = [(w / reach, D - begin) for w, D in uploads]
            mean = sum(q * C for q, C in changes)
            spread = sum(q * float(torch.sum((C - mean) ** 2)) for q, C in changes)
            count = reach**2 / sum(w * w for w, _ in uploads)
            size = float(torch.sum(mean * mean))
            raw = max(0.0, 1.0 - spread / ((count - 1.0) * size)) if size > 0 else 0.0
        else:
            raw = below if lone == "borrow" else 0.0
        lam = strength * raw
        lambdas.append(lam)
        c = reach + (1 - reach) * lam
        delta += (1 - c) * begin + sum(w * c / reach * D for w, D in uploads)
        low, below = level, raw
    return delta, lambdas


def ref_florist(updates, module: str, tau: float) -> Tensor:
    """Dense SVD of the FedAvg product sum, cut at the smallest rank whose energy reaches tau."""
    dense = product_sum(updates, module, p(updates))
    S = torch.linalg.svdvals(dense)
    energy = S.square()
    keep = 1
    while keep < len(S) and float(energy[:keep].sum()) < tau * float(energy.sum()):
        keep += 1
    return best_rank(dense, keep)


def ref_fedsa(updates, module: str) -> Tensor:
    """``Abar``, the zero-padded average of the ``A``s: FedSA's only global part (each client
    keeps its own ``B``, so the server has no ``delta``)."""
    return padded(updates, module, p(updates), renormalise=False)[1]


def dense_global(result, module: str) -> Tensor:
    """The round's global matrix as the library reports it: ``delta``, or FedSA's shared ``A``."""
    return result.shared_a(module) if hasattr(result, "shared_a") else result.delta(module)


def ref_carryover(updates, module: str, previous: Tensor, top: int) -> Tensor:
    """``sum_i p_i s_i B_i A_i + sum_{j <= top} (1 - q_j) sigma_j u_j v_j^T`` from the dense SVD of the
    previous global update, ``q_j = sum_{i: r_i >= j} p_i``."""
    weights = p(updates)
    ranks = [u.factors[module].rank for u in updates]
    U, S, Vh = torch.linalg.svd(previous.to(F64), full_matrices=False)
    carried = torch.zeros_like(previous, dtype=F64)
    for j in range(min(top, S.shape[0])):
        q = sum(w for w, r in zip(weights, ranks) if r >= j + 1)
        carried += (1.0 - q) * S[j] * torch.outer(U[:, j], Vh[j])
    return product_sum(updates, module, weights) + carried


def ref_lora_fair(updates, module: str, lam: float = 0.01, steps: int = 100, step_size: float = 1.0) -> Tensor:
    """``(B_avg + dB) A_avg``: ``steps`` gradient steps (autograd on the dense ``m x n`` matrices)
    from ``D = 0`` on ``1 - cos(dW, (B_avg + ||B_avg|| D) A_avg) + lam ||D||^2``, each of
    ``step_size / (1 / tau + 2 lam)`` with ``tau K = (||X|| - tau u)^2``: ``X`` the current
    product, ``u = ||B_avg|| ||grad A_avg||`` how fast a step moves it, ``K = (2 / sqrt(3))
    ||B_avg||^2 ||A_avg||_2^2`` (the cosine's Hessian is at most ``K / ||X||^2``)."""
    weights = p(updates)
    B0, A = padded(updates, module, weights, renormalise=False)
    ideal = product_sum(updates, module, weights)
    size = torch.linalg.norm(B0)
    if steps == 0 or size == 0 or torch.linalg.norm(B0 @ A) == 0 or torch.linalg.norm(ideal) == 0:
        return B0 @ A
    K = 2 / 3**0.5 * size**2 * torch.linalg.matrix_norm(A, ord=2) ** 2
    D = torch.zeros_like(B0)
    for _ in range(steps):
        D = D.detach().requires_grad_(True)
        X = (B0 + size * D) @ A
        cos = (ideal * X).sum() / (torch.linalg.norm(ideal) * torch.linalg.norm(X))
        (grad,) = torch.autograd.grad(1 - cos + lam * (D * D).sum(), D)
        x, u = torch.linalg.norm(X.detach()), size * torch.linalg.norm(grad @ A)
        # the smaller root of u^2 tau^2 - (2 x u + K) tau + x^2 = 0 (as 2c / (b + sqrt(b^2 - 4ac)))
        b = 2 * x * u + K
        tau = 2 * x**2 / (b + torch.sqrt(b**2 - 4 * u**2 * x**2))
        D = D - step_size / (1 / tau + 2 * lam) * grad
    return (B0 + size * D.detach()) @ A


def ref_delta(method: str, updates, module: str, seed: int = 0, **options) -> Tensor:
    """Dense float64 global update of ``method`` (FedSA: its shared ``A``)."""
    if method == "lora_fair":
        return ref_lora_fair(updates, module, **options)
    if method == "rb_lora":
        B, A = padded(updates, module, p(updates), renormalise=options.get("rank_balanced", True))
        return B @ A
    if method in TRUNCATION:
        B, A = ref_factors(method, updates, module, seed)
        return B @ A
    if method in ("flora", "flexlora", "carryover"):  # carryover without a previous update: flexlora
        return product_sum(updates, module, p(updates))
    if method == "raflora":
        return ref_raflora(updates, module, options.get("rank_levels"))
    if method == "consensus":
        return ref_consensus(updates, module, **options)[0]
    if method == "florist":
        return ref_florist(updates, module, options.get("tau", 0.9))
    if method == "fedsa":
        return ref_fedsa(updates, module)
    raise ValueError(method)


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]:g}"


def assert_singular_values(result, module: str, expected_delta: Tensor, dtype: torch.dtype) -> None:
    """``result.singular_values`` matches the dense spectrum: the leading values agree, the
    ones it leaves out or reports beyond the rank are ~0."""
    dense = torch.linalg.svdvals(expected_delta.to(F64))
    got = result.singular_values(module).to(F64)
    assert torch.all(got[:-1] >= got[1:] - 1e-12), "singular values must be descending"
    k = min(len(got), len(dense))
    # Weyl: each singular value moves by at most ||E||_2 <= ||E||_F, and the budget is
    # ||E||_F <= tol * ||delta||_F.
    tol = TOLERANCE[dtype] * float(torch.linalg.norm(dense))
    assert torch.allclose(got[:k], dense[:k], rtol=0, atol=tol), (got[:k], dense[:k])
    # Anything the result does not report must be (numerically) zero in the dense spectrum.
    rest = dense[k:]
    assert len(rest) == 0 or float(rest.max()) <= tol, rest
