"""Replication padding (Byun & Lee, NAACL 2025, arXiv 2406.17477).

A low-rank client's missing components are filled with the high-rank clients' components instead
of zeros. As implemented here (the per-index form of that rule): component ``j`` of ``A`` (row)
and of ``B`` (column, scale folded in) is averaged only over the clients with ``r_i > j``, with
weights renormalised over them: ``x[j] = sum_{i: r_i > j} p_i x_i[j] / sum_{i: r_i > j} p_i``.
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raflora.aggregation.method import Method
from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import TruncationResult
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


@dataclass
class Replication(Method):
    """Replication padding: component ``j`` averaged over the clients that have it."""

    name: ClassVar[str] = "replication"
    result_type: ClassVar[type] = TruncationResult

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        return {
            m: average_factors([u.factors[m] for u in checked.updates], weights, renormalise=True)
            for m in checked.modules
        }
