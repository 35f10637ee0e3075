"""FFA-LoRA (Sun et al., ICLR 2024): ``A`` frozen at a shared seeded init, only ``B`` trained.

The frozen ``A`` of a module is ``init_a(module, r, n, seed)`` (nested, so a rank-``r`` client's
``A`` is the first ``r`` rows of the rank-``r_max`` one). ``B`` is averaged with zero padding and
scales folded in; the aggregate is then exact: ``delta = B_avg A_0 = sum_i p_i s_i B_i A_0[:r_i]``.
An update whose ``A`` is not the shared init is refused (it would silently break exactness).
Sends and receives ``m r`` values per module (``A`` is regenerated from the seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from raflora.aggregation.method import Method, Refusals
from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import FrozenAResult
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank, init_a


@dataclass
class FFALoRA(Method):
    """FFA-LoRA: ``A`` frozen at a shared seeded init that both sides regenerate; ``B`` averaged.

    ``A`` never travels."""

    name: ClassVar[str] = "ffa"
    uploads: ClassVar[str] = "B"
    trains_a: ClassVar[bool] = False
    result_type: ClassVar[type] = FrozenAResult

    def refuse(self, checked: Checked, seed: int) -> Refusals:
        refused: Refusals = {}
        for module in checked.modules:
            n = checked.shapes[module][1]
            frozen = init_a(module, max(checked.ranks(module)), n, seed, checked.dtype).to(checked.device)
            tol = 1e-2 / n**0.5
            for i, u in enumerate(checked.updates):
                A = u.factors[module].A
                if i not in refused and not torch.allclose(A, frozen[: A.shape[0]], rtol=0.0, atol=tol):
                    refused[i] = (
                        module,
                        f"client {u.client_id!r}: module {module!r}: A is not the shared frozen "
                        f"init (seed {seed}); ffa trains B only",
                    )
        return refused

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        factors = {}
        for m in checked.modules:
            B = average_factors([u.factors[m] for u in checked.updates], weights).B
            frozen = init_a(m, B.shape[1], checked.shapes[m][1], seed, checked.dtype).to(checked.device)
            factors[m] = LowRank(A=frozen, B=B)
        return factors

    def missing_part(self, module, part, rank, shape, seed, dtype=torch.float32):
        if part == "A":
            return init_a(module, rank, shape[1], seed, dtype)
        return super().missing_part(module, part, rank, shape, seed, dtype)
