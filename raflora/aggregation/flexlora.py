"""FlexLoRA (Bai et al., NeurIPS 2024, arXiv 2402.11505): weighted product sum, SVD re-allocation.

``delta = sum_i p_i s_i B_i A_i``; a client of rank ``r`` starts from the best rank-``r``
approximation of ``delta`` (truncated SVD, its scale divided out). The SVD comes from the stacked
factors (QR + a small core SVD), never from the dense ``m x n`` sum.
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raflora.aggregation.method import Method
from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import fedavg_stacks
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


@dataclass
class FlexLoRA(Method):
    """FlexLoRA: the weighted product sum; rank-``r`` clients start from its best rank-``r`` approximation."""

    name: ClassVar[str] = "flexlora"
    result_type: ClassVar[type] = SVDResult

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        return fedavg_stacks(checked)
