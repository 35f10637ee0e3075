"""Zero padding (naive HetLoRA; the heterogeneous FedIT of FLoRA/FLoRIST's baselines).

Pad every client's ``A`` rows and ``B`` columns with zeros to the largest rank, then FedAvg the
factors: component ``j`` is ``sum_i p_i x_i[j]`` with ``x_i[j] = 0`` for ``r_i <= j``, which
dilutes high-rank components by ``q_j = sum_{i: r_i > j} p_i`` every round.
``delta = B_avg @ A_avg``; a client of rank ``r`` gets the first ``r`` components.
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
class ZeroPad(Method):
    """Zero padding: FedAvg of the factors padded with zeros to the largest rank."""

    name: ClassVar[str] = "zero_pad"
    result_type: ClassVar[type] = TruncationResult

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        return {m: average_factors([u.factors[m] for u in checked.updates], weights) for m in checked.modules}
