"""FedIT (Zhang et al., ICASSP 2024): FedAvg of ``A`` and of ``B`` separately.

``delta = (sum_i p_i s_i B_i) (sum_i p_i A_i)``. Homogeneous ranks only: an update whose rank
differs from the round's most common rank for a module is refused with a reason.
Sends and receives ``r (m + n)`` values per module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from raflora.aggregation.method import Method, Refusals
from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import TruncationResult
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


@dataclass
class FedIT(Method):
    """FedIT: FedAvg of ``A`` and of ``B`` separately; one rank for every client."""

    name: ClassVar[str] = "fedit"
    mixed_ranks: ClassVar[bool] = False
    result_type: ClassVar[type] = TruncationResult

    def refuse(self, checked: Checked, seed: int) -> Refusals:
        refused: Refusals = {}
        for module in checked.modules:
            ranks = checked.ranks(module)
            common = Counter(ranks).most_common(1)[0][0]
            for i, (u, r) in enumerate(zip(checked.updates, ranks)):
                if r != common and i not in refused:
                    refused[i] = (
                        module,
                        f"client {u.client_id!r}: module {module!r}: fedit needs homogeneous "
                        f"ranks, got rank {r} where the round's clients use {common} (use zero_pad or raflora)",
                    )
        return refused

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        return {m: average_factors([u.factors[m] for u in checked.updates], weights) for m in checked.modules}
