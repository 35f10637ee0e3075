"""FLoRA (Wang et al., NeurIPS 2024, arXiv 2409.05976): exact aggregation by stacking.

``B_g = [B_1 ... B_N]`` (``m x R``), ``A_g = [p_1 s_1 A_1; ...; p_N s_N A_N]`` (``R x n``,
``R = sum r_i``), so ``delta = B_g A_g = sum_i p_i s_i B_i A_i`` exactly. Clients merge ``delta``
into the frozen weight and start a fresh adapter (``B = 0``, seeded ``A``).
Every client receives the whole stack: ``R (m + n)`` values per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raflora.aggregation.method import Method
from raflora.aggregation.result import MergeResult
from raflora.aggregation.stacking import fedavg_stacks
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


@dataclass
class FLoRA(Method):
    """FLoRA: exact stacking; clients merge the update into the base and start a fresh adapter."""

    name: ClassVar[str] = "flora"
    merges_into_base: ClassVar[bool] = True
    result_type: ClassVar[type] = MergeResult

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        return fedavg_stacks(checked)
