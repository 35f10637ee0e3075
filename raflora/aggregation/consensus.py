"""consensus: carryover, plus each rank partition's mean change kept as far as its clients agree on it
(this library's own).

Not from a paper. carryover keeps the previous global update ``G_t`` whole and adds every client's
change at its data share, so a partition that few clients reach moves little each round; raFLoRA
renormalises a partition to its clients, which also keeps a lone high-rank client's drift whole.
consensus measures, per partition, how much the clients that reach it agree on their *changes*
(not on their uploads, which all contain the same start) and moves the partition as far as that
agreement supports.

Per module: client ``i`` (rank ``r_i``, data share ``p_i``) uploads ``s_i B_i A_i``. Rank levels
``l_1 < ... < l_K`` are the round's distinct ranks: partition ``k`` holds components
``(l_{k-1}, l_k]``, reached by ``S_k = {i: r_i >= l_k}`` of weight ``P_k = sum_{S_k} p_i``
(carryover's ``q_j`` for ``j`` in partition ``k``). With ``G_t = sum_j sigma_j u_j v_j^T`` (its top
``r_top`` directions, ``r_top`` the federation's largest rank; no previous update: ``G_t = 0``):

    start_k = sum_{j in partition k} sigma_j u_j v_j^T        U_ik = s_i B_i[:, k] A_i[k]
    C_ik = U_ik - start_k                                       (client i's change in partition k)
    M_k = sum_{S_k} (p_i / P_k) C_ik      V_k = sum_{S_k} (p_i / P_k) ||C_ik - M_k||^2
    n_k = P_k^2 / sum_{S_k} p_i^2         lambda_k = strength * max(0, 1 - V_k / ((n_k - 1) ||M_k||^2))
    c_k = P_k + (1 - P_k) lambda_k
    G_{t+1} = sum_k [(1 - c_k) start_k + sum_{S_k} (p_i c_k / P_k) U_ik] + sum_{j > l_K} sigma_j u_j v_j^T
            = G_t + sum_k c_k M_k

``lambda_k`` is positive-part James-Stein: ``V_k / (n_k - 1)`` estimates the noise in the mean
``M_k`` of ``n_k`` (effective) clients without bias when the changes are independent noise, so
pure noise gets ``lambda ~ 0`` and identical changes ``lambda = 1`` (``0/0``, no change: 0).
``lambda = 0`` is carryover exactly (every change at ``p_i``, every start carried whole);
``lambda = 1`` keeps the mean change of the clients that reach the partition whole, as raFLoRA
keeps it. A partition reached by one client has no evidence: ``lone = "carryover"`` (default)
gives it ``lambda = 0``, ``lone = "borrow"`` the (unscaled) ``lambda`` of the nearest lower
partition. ``C_ik`` lines up with ``start_k`` because every client started from the balanced top
``r_i`` factors of ``G_t`` (:class:`~raflora.aggregation.result.SVDResult`), column ``j`` on
direction ``j``.

As a stack: the uploads' columns with weights ``p_i c_k / P_k`` and ``G_t``'s top components with
weights ``1 - c_k`` (1 beyond ``l_K``), never the dense ``m x n`` matrix. Every norm comes from Gram
matrices of the factors, ``<X, Y>_F = sum((B_X^T B_Y) * (A_X A_Y^T))``, in float64 on unit-scaled
factors (``lambda`` is a ratio, so scaling every piece alike changes nothing). A client of rank
``r`` starts from the best rank-``r`` approximation of ``G_{t+1}`` (as FlexLoRA).
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from raflora.aggregation.method import Method, option
from raflora.aggregation.numerics import stable_svd
from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import append_components, stack_factors
from raflora.aggregation.validate import Checked
from raflora.lora import LoRAFactors, LowRank

LONE = ("carryover", "borrow")
Start = tuple[Tensor, Tensor]  # (U_t S_t, V_t^T): the previous update's top t components


def _peak_log2(t: Tensor) -> tuple[Tensor, float]:
    """``t`` in float64 divided by ``max |t|``, and ``log2 max |t|`` (``-inf`` for zeros)."""
    t = t.to(torch.float64)
    peak = float(t.abs().max()) if t.numel() else 0.0
    return (t / peak, math.log2(peak)) if peak > 0.0 else (t, -math.inf)


def piece_gram(pieces: Sequence[tuple[Tensor, Tensor, float]]) -> Tensor:
    """``<D_a, D_b>_F`` of the pieces ``D_a = s_a B_a A_a`` (``(B_a, A_a, s_a)``, any widths, a
    width of 0 is a zero piece), all divided by one power of two (the largest piece's magnitude:
    nothing overflows, and every ratio of them is unchanged)."""
    units, logs, signs = [], [], []
    for B, A, s in pieces:
        Bu, log_b = _peak_log2(B)
        Au, log_a = _peak_log2(A)
        units.append((Bu, Au))
        logs.append(math.log2(abs(s)) + log_b + log_a if s != 0.0 else -math.inf)
        signs.append(math.copysign(1.0, s))
    count = len(pieces)
    top = max(logs)
    if top == -math.inf:
        return torch.zeros((count, count), dtype=torch.float64)
    coef = [sign * 2.0 ** (g - top) if g > -math.inf else 0.0 for g, sign in zip(logs, signs)]
    Bs = torch.cat([Bu * c for (Bu, _), c in zip(units, coef)], dim=1)
    As = torch.cat([Au for _, Au in units], dim=0)
    full = (Bs.T @ Bs) * (As @ As.T)
    owner = torch.repeat_interleave(torch.arange(count), torch.tensor([Au.shape[0] for _, Au in units]))
    sums = torch.zeros((count, Bs.shape[1]), dtype=torch.float64, device=full.device)
    sums[owner.to(full.device), torch.arange(Bs.shape[1], device=full.device)] = 1.0
    return sums @ full @ sums.T


def agreement(changes: Tensor, weights: Sequence[float]) -> float:
    """Positive-part James-Stein ``max(0, 1 - V / ((n - 1) ||M||^2))`` of the pieces whose Gram
    matrix is ``changes``, weighted by ``weights`` (their ``p_i``); 0 when the mean is zero."""
    p = torch.tensor(list(weights), dtype=torch.float64, device=changes.device)
    q = p / p.sum()
    mean_sq = float(q @ changes @ q)
    count = 1.0 / float(q @ q)
    if not mean_sq > 0.0 or not count > 1.0:
        return 0.0
    spread = max(float(changes.diagonal() @ q) - mean_sq, 0.0)
    return min(max(1.0 - spread / ((count - 1.0) * mean_sq), 0.0), 1.0)


def previous_svd(previous: LowRank, top: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """``(U_t, S_t, V_t)``: the top ``t = min(top, rank)`` singular directions of ``previous``, in
    ``dtype`` on ``device`` (computed as carryover computes them)."""
    U, S, V = stable_svd(previous.B.to(dtype=dtype, device=device), previous.A.to(dtype=dtype, device=device), top=top)
    k = min(top, S.shape[0])
    return U[:, :k], S[:k], V[:, :k]


def partition_agreement(
    factors: Sequence[LoRAFactors],
    weights: Sequence[float],
    previous: LowRank | None = None,
    lone: str = "carryover",
    strength: float = 1.0,
    *,
    start: Start | None = None,
) -> list[tuple[int, float]]:
    """``(l_k, lambda_k)`` for each rank level of the round (the module's docstring): the clients'
    uploads ``factors`` with data shares ``weights``, their changes measured from ``previous`` (the
    previous global update, or ``start``, its top components already split; neither: from 0)."""
    ranks = [f.rank for f in factors]
    levels = sorted(set(ranks))
    if start is None and previous is not None:
        U, S, V = previous_svd(previous, levels[-1], factors[0].A.dtype, factors[0].A.device)
        start = (U * S, V.T)
    out, low, below = [], 0, 0.0
    for level in levels:
        members = [i for i, r in enumerate(ranks) if r >= level]
        if len(members) >= 2:
            pieces = [(factors[i].B[:, low:level], factors[i].A[low:level], factors[i].scale) for i in members]
            if start is not None:
                us, vt = start
                pieces.append((us[:, low:level], vt[low:level], 1.0))
            gram = piece_gram(pieces)
            if start is not None:  # <C_a, C_b> = <U_a - S, U_b - S>
                last = gram[-1, :-1]
                gram = gram[:-1, :-1] - last[:, None] - last[None, :] + gram[-1, -1]
            raw = agreement(gram, [weights[i] for i in members])
        else:
            raw = below if lone == "borrow" else 0.0
        out.append((level, strength * raw))
        low, below = level, raw
    return out


def reach_of(ranks: Sequence[int], weights: Sequence[float], level: int) -> float:
    """``P_k``: the summed weight of the ranks that reach ``level`` (summed as carryover sums ``q_j``)."""
    return sum(p for r, p in zip(ranks, weights) if r >= level)


def consensus_weights(
    ranks: Sequence[int], weights: Sequence[float], agreement: Sequence[tuple[int, float]]
) -> list[Tensor]:
    """Per-component weights of the uploads: ``p_i c_k / P_k = p_i (1 + lambda_k (1 - P_k) / P_k)``
    in partition ``k`` (``p_i`` itself where every client reaches it, or where ``lambda_k = 0``)."""
    factor = []
    for level, lam in agreement:
        reach = reach_of(ranks, weights, level)
        whole = all(r >= level for r in ranks)
        factor.append(1.0 if whole else 1.0 + lam * (1.0 - reach) / reach)
    out = []
    for r, p in zip(ranks, weights):
        w = torch.empty(r, dtype=torch.float64)
        low = 0
        for (level, _), f in zip(agreement, factor):
            w[low : min(level, r)] = p * f
            low = level
        out.append(w)
    return out


def start_weights(
    ranks: Sequence[int], weights: Sequence[float], agreement: Sequence[tuple[int, float]], top: int
) -> Tensor:
    """``1 - c_k = (1 - P_k)(1 - lambda_k)`` for the previous update's directions ``1 .. top`` in
    partition ``k``, 1 beyond the round's largest rank (carryover's ``1 - q_j`` when ``lambda = 0``)."""
    w = torch.ones(top, dtype=torch.float64)
    low = 0
    for level, lam in agreement:
        w[low : min(level, top)] = (1.0 - reach_of(ranks, weights, level)) * (1.0 - lam)
        low = level
    return w


@dataclass
class Consensus(Method):
    """consensus (this library's own): carryover plus each partition's mean change as far as its clients agree."""

    name: ClassVar[str] = "consensus"
    result_type: ClassVar[type] = SVDResult

    strength: float = option(
        1.0,
        help="multiplies each partition's agreement lambda_k, in [0, 1] (0: carryover exactly; 1: the "
        "mean change of a partition whose clients agree fully is kept whole, as raflora keeps it)",
    )
    lone: Literal["carryover", "borrow"] = option(
        "carryover",
        help="a partition reached by one client: carryover (lambda 0: its change at its data share) or "
        "borrow (the lambda of the nearest lower partition)",
    )

    def check(self) -> None:
        ok = isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool)
        if not ok or not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"consensus: strength must be a number in [0, 1], got {self.strength!r}")
        if self.lone not in LONE:
            raise ValueError(f"consensus: lone {self.lone!r} is not known; choose one of {', '.join(LONE)}")

    @property
    def wants_previous(self) -> bool:
        return True  # always: the changes are measured from the previous global update

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        # The round as if there were no previous update (start 0); carry() redoes a module that has one.
        return {m: self.stack(checked, m, None)[0] for m in checked.modules}

    def carry(self, factors, previous, checked, module, top_rank):
        if previous is None:
            return factors
        ranks = checked.ranks(module)
        top = top_rank if top_rank is not None else max(ranks)
        U, S, V = previous_svd(previous, top, factors.dtype, factors.device)
        stack, lambdas = self.stack(checked, module, (U * S, V.T))
        w = start_weights(ranks, checked.weights, lambdas, S.shape[0]).to(dtype=S.dtype, device=S.device)
        # U (S w), as carryover forms it: strength 0 gives carryover's numbers bit for bit
        return append_components(stack, A=V.T, B=U * (S * w))

    def stack(self, checked: Checked, module: str, start: Start | None):
        """The module's uploads with their weights (a stack) and ``[(l_k, lambda_k)]``, the changes
        measured from ``start`` (``None``: from 0)."""
        fs = [u.factors[module] for u in checked.updates]
        lambdas = partition_agreement(fs, checked.weights, None, self.lone, float(self.strength), start=start)
        return stack_factors(fs, consensus_weights(checked.ranks(module), checked.weights, lambdas)), lambdas
