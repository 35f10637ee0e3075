"""Rank-collapse diagnostics of one round's global update, per module and averaged."""

from __future__ import annotations

import math
from collections.abc import Sequence

from raflora.aggregation import AggregationResult
from raflora.lora import energy_by_partition, energy_ratio


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def round_diagnostics(result: AggregationResult, r_min: int, rank_levels: Sequence[int]) -> dict:
    """``rho_rmin`` (energy share of the top ``r_min`` directions) and the energy share of each rank
    partition, averaged over modules (``*_by_module`` keep the per-module values)."""
    rho, parts = {}, {}
    for module in result.modules:
        S = result.singular_values(module)
        rho[module] = energy_ratio(S, r_min)
        parts[module] = energy_by_partition(S, rank_levels)
    keys = list(next(iter(parts.values())))
    return {
        "rho_rmin": _mean(list(rho.values())),
        "energy_by_partition": {k: _mean([p[k] for p in parts.values()]) for k in keys},
        "rho_rmin_by_module": rho,
        "energy_by_partition_by_module": parts,
    }
