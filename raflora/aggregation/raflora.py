"""raFLoRA (Wu, Hu, Min, Wang, arXiv 2602.13486): rank-partitioned aggregation.

Rank levels ``l_1 < ... < l_K`` (option ``rank_levels``: the federation's rank set; default the
ranks present in the round) split the components into partitions ``P_k = (l_{k-1}, l_k]``.
Component ``j`` of client ``i`` lies in ``P_k(j)`` and is weighted by
``c_ij = p_i / sum_{i': r_i' >= l_k(j)} p_i'``, the client's share among those that reach the
partition, so no partition is diluted by clients that cannot contribute to it:

    delta = sum_k sum_{i: r_i >= l_k} c_ik s_i B_i[:, P_k] A_i[P_k] = sum_i s_i B_i diag(c_i) A_i

A client of rank ``r`` starts from the best rank-``r`` approximation of ``delta`` (as FlexLoRA).
Homogeneous ranks give ``K = 1`` and ``c_ij = p_i``: exactly FlexLoRA. A partition no client
reaches contributes nothing. An update whose rank is not a level is refused.
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

from typing import Sequence

import torch

from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import stack_factors
from raflora.aggregation.validate import Checked


def partition_weights(ranks: Sequence[int], weights: Sequence[float], levels: Sequence[int]) -> list[torch.Tensor]:
    """Per-component weights ``c_i`` (length ``r_i``) of raFLoRA's rank-partitioned average."""
    levels = sorted(set(levels))
    out = []
    for r, p in zip(ranks, weights):
        c = torch.empty(r, dtype=torch.float64)
        low = 0
        for level in levels:
            if low >= r:
                break
            if all(rr >= level for rr in ranks):
                # Every client reaches it: the share is p itself. Dividing by sum(p), which
                # rounding can leave a hair off 1, would break "homogeneous ranks == FlexLoRA".
                c[low:min(level, r)] = p
            else:
                reach = sum(w for rr, w in zip(ranks, weights) if rr >= level)
                c[low:min(level, r)] = p / reach
            low = level
        out.append(c)
    return out


def aggregate_raflora(checked: Checked, seed: int = 0, rank_levels: Sequence[int] | None = None) -> SVDResult:
    if rank_levels is not None:
        levels = sorted({int(level) for level in rank_levels})
        if not levels or levels[0] < 1:
            raise ValueError(f"raflora: rank_levels must be positive integers, got {list(rank_levels)}")
        refuse = {}
        for m in checked.modules:
            for i, (u, r) in enumerate(zip(checked.updates, checked.ranks(m))):
                if r not in levels and i not in refuse:
                    refuse[i] = (m, f"client {u.client_id!r}: module {m!r}: rank {r} is not one of the "
                                 f"federation's rank_levels {levels}")
        if refuse:
            checked.reject(refuse)
    weights = checked.weights
    factors = {}
    for m in checked.modules:
        ranks = checked.ranks(m)
        levels_m = levels if rank_levels is not None else sorted(set(ranks))
        fs = [u.factors[m] for u in checked.updates]
        factors[m] = stack_factors(fs, partition_weights(ranks, weights, levels_m))
    return SVDResult("raflora", checked, factors, seed)
