"""Factor averaging shared by the factor-level methods (fedit, zero_pad, hetlora, replication, ffa).

Each client's scale is folded into its ``B`` before averaging, so clients whose ``alpha / r``
differ combine correctly: the averaged pair satisfies ``delta = B_avg @ A_avg``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raflora.lora import LoRAFactors, LowRank


def average_factors(factors: Sequence[LoRAFactors], weights: Sequence[float], renormalise: bool = False) -> LowRank:
    """Weighted average of ``(s_i B_i, A_i)`` padded to the largest rank.

    ``renormalise=False`` (zero padding): component ``j`` is ``sum_i w_i x_i[j]`` with ``x_i[j] = 0``
    when ``r_i <= j``. ``renormalise=True`` (replication padding): component ``j`` is averaged only
    over the clients that have it, ``sum_{i: r_i > j} w_i x_i[j] / sum_{i: r_i > j} w_i``.
    Returns ``LowRank(A=A_avg, B=B_avg)``, ``B_avg`` with the scales folded in.
    """
    first = factors[0]
    r_max = max(f.rank for f in factors)
    m, n = first.shape
    B = torch.zeros((m, r_max), dtype=first.B.dtype, device=first.B.device)
    A = torch.zeros((r_max, n), dtype=first.A.dtype, device=first.A.device)
    coverage = torch.zeros(r_max, dtype=torch.float64)
    for f, w in zip(factors, weights):
        r = f.rank
        B[:, :r] += (w * f.scale) * f.B
        A[:r] += w * f.A
        coverage[:r] += w
    if renormalise:
        inv = (1.0 / coverage).to(dtype=A.dtype, device=A.device)
        B = B * inv
        A = A * inv[:, None]
    return LowRank(A=A, B=B)
