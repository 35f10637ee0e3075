"""consensus: each rank partition kept in proportion to how much its clients agree (this library's own).

Not from a paper. FlexLoRA shrinks a partition in proportion to how few clients reach it (rank
collapse); raFLoRA renormalises it to full weight, which also keeps a lone high-rank client's drift
whole. consensus weighs each partition between the two by the evidence that its mean is signal.

Per module: client ``i`` uploads ``s_i B_i A_i`` with data share ``p_i``. Rank levels
``l_1 < ... < l_K`` are the round's distinct ranks (raFLoRA's partitions): partition ``k`` holds
components ``(l_{k-1}, l_k]``, reached by ``S_k = {i: r_i >= l_k}`` of weight ``P_k = sum_{S_k} p_i``.
Client ``i``'s piece of it is ``D_ik = s_i B_i[:, k] A_i[k]``, and with ``q_i = p_i / P_k``:

    E_k = sum_{S_k} q_i ||D_ik||^2        M_k = sum_{S_k} q_i D_ik        V_k = E_k - ||M_k||^2 >= 0
    d_k = V_k / E_k                        (relative dispersion, in [0, 1]; |S_k| >= 2 and E_k > 0)
    n_k = P_k^2 / sum_{S_k} p_i^2          (effective number of clients)
    lambda_k = strength * (1 - d_k) / ((1 - d_k) + d_k / n_k)        (agreement, in [0, 1])
    c_k = P_k + (1 - P_k) lambda_k
    delta = sum_k sum_{S_k} (p_i c_k / P_k) D_ik = sum_i s_i B_i diag(w_i) A_i

``lambda_k`` is the signal share of the mean's energy: ``1 - d_k`` of a client's energy is shared,
``d_k / n_k`` is what the spread leaves in a mean of ``n_k`` clients. ``lambda = 1`` (identical
pieces) is raFLoRA's renormalisation ``p_i / P_k``; ``lambda = 0`` is FlexLoRA's plain ``p_i``, so a
partition whose clients disagree shrinks as in FlexLoRA and one they agree on keeps its spread.
A partition with one client (or no energy) has no evidence of agreement: ``lone = "borrow"`` takes
``d_k = d_{k-1}`` of the nearest lower partition (``d = 0`` for a round of one client), ``lone =
"flexlora"`` sets ``lambda_k = 0``. ``strength = 0`` is FlexLoRA exactly; homogeneous ranks (every
partition reached by every client, ``P_k = 1``) are FlexLoRA exactly.

Every norm comes from the factors' Gram matrices, ``<D_i, D_j>_F = s_i s_j sum((B_i^T B_j) *
(A_i A_j^T))``, in float64 on unit-scaled factors (``d_k`` is a ratio, so scaling all pieces alike
changes nothing); the dense ``m x n`` update is never formed. A client of rank ``r`` starts from the
best rank-``r`` approximation of ``delta`` (as FlexLoRA). Sends and receives ``r_i (m + n)`` values
per module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from raflora.aggregation.method import Method, option
from raflora.aggregation.raflora import partition_weights
from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import stack_factors
from raflora.aggregation.validate import Checked
from raflora.lora import LoRAFactors, LowRank

LONE = ("borrow", "flexlora")


def _peak_log2(t: Tensor) -> tuple[Tensor, float]:
    """``t`` in float64 divided by ``max |t|``, and ``log2 max |t|`` (``-inf`` for zeros)."""
    t = t.to(torch.float64)
    peak = float(t.abs().max()) if t.numel() else 0.0
    return (t / peak, math.log2(peak)) if peak > 0.0 else (t, -math.inf)


def dispersion(pieces: Sequence[tuple[Tensor, Tensor, float]], shares: Sequence[float]) -> float | None:
    """``d = V / E`` of the pieces ``D_i = s_i B_i A_i`` (``(B_i, A_i, s_i)``, equal widths) under the
    weights ``shares`` (summing to 1); ``None`` when every piece is zero."""
    units, logs = [], []
    for B, A, s in pieces:
        Bu, log_b = _peak_log2(B)
        Au, log_a = _peak_log2(A)
        units.append((Bu, Au))
        logs.append(math.log2(s) + log_b + log_a)
    top = max(logs)
    if top == -math.inf:
        return None
    # Every piece over the largest one's magnitude: nothing overflows, the ratio is unchanged.
    coef = [2.0 ** (g - top) if g > -math.inf else 0.0 for g in logs]
    Bs = torch.cat([Bu * c for (Bu, _), c in zip(units, coef)], dim=1)
    As = torch.cat([Au for _, Au in units], dim=0)
    k, width = len(pieces), Bs.shape[1] // len(pieces)
    gram = ((Bs.T @ Bs) * (As @ As.T)).reshape(k, width, k, width).sum(dim=(1, 3))
    q = torch.tensor(list(shares), dtype=torch.float64, device=gram.device)
    energy = float(gram.diagonal() @ q)
    if not energy > 0.0:
        return None
    spread = energy - float(q @ gram @ q)
    return min(max(spread / energy, 0.0), 1.0)


def partition_agreement(
    factors: Sequence[LoRAFactors], weights: Sequence[float], lone: str = "borrow", strength: float = 1.0
) -> list[tuple[int, float]]:
    """``(l_k, lambda_k)`` for each rank level of the round (the module's docstring)."""
    ranks = [f.rank for f in factors]
    out, low, d_below = [], 0, 0.0
    for level in sorted(set(ranks)):
        members = [i for i, r in enumerate(ranks) if r >= level]
        reach = sum(weights[i] for i in members)
        d = None
        if len(members) >= 2:
            pieces = [(factors[i].B[:, low:level], factors[i].A[low:level], factors[i].scale) for i in members]
            d = dispersion(pieces, [weights[i] / reach for i in members])
        if d is None and lone == "flexlora" and len(members) == 1:
            agreement = 0.0
        else:
            d = d_below if d is None else d
            count = reach**2 / sum(weights[i] ** 2 for i in members)
            signal, noise = 1.0 - d, d / count
            agreement = signal / (signal + noise) if signal + noise > 0.0 else 0.0
            d_below = d
        out.append((level, strength * agreement))
        low = level
    return out


def consensus_weights(ranks: Sequence[int], weights: Sequence[float], agreement: Sequence[tuple[int, float]]):
    """Per-component weights ``w_i``: ``p_i + lambda_k (p_i / P_k - p_i)`` in partition ``k``, the
    raFLoRA weight ``p_i / P_k`` from :func:`~raflora.aggregation.raflora.partition_weights` (``p_i``
    itself where every client reaches the partition, so there ``w_i = p_i`` whatever ``lambda_k``)."""
    levels = [level for level, _ in agreement]
    out = []
    for r, p, renormalised in zip(ranks, weights, partition_weights(ranks, weights, levels)):
        lam = torch.empty(r, dtype=torch.float64)
        low = 0
        for level, value in agreement:
            lam[low : min(level, r)] = value
            low = level
        out.append(p + lam * (renormalised - p))
    return out


@dataclass
class Consensus(Method):
    """consensus (this library's own): each rank partition between FlexLoRA and raFLoRA by its clients' agreement."""

    name: ClassVar[str] = "consensus"
    result_type: ClassVar[type] = SVDResult

    strength: float = option(
        1.0,
        help="multiplies each partition's agreement lambda_k, in [0, 1] (0: flexlora exactly; 1: "
        "a partition whose clients agree fully is renormalised as raflora)",
    )
    lone: str = option(
        "borrow",
        help="a partition reached by one client: borrow (its dispersion is the nearest lower "
        "partition's) or flexlora (agreement 0: its plain data share)",
    )

    def check(self) -> None:
        ok = isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool)
        if not ok or not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"consensus: strength must be a number in [0, 1], got {self.strength!r}")
        if self.lone not in LONE:
            raise ValueError(f"consensus: lone {self.lone!r} is not known; choose one of {', '.join(LONE)}")

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        factors = {}
        for m in checked.modules:
            fs = [u.factors[m] for u in checked.updates]
            agreement = partition_agreement(fs, weights, self.lone, float(self.strength))
            factors[m] = stack_factors(fs, consensus_weights(checked.ranks(m), weights, agreement))
        return factors
