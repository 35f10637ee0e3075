"""FLoRIST (Ramesh & Dass, MLSys 2026, arXiv 2506.09199): stacked SVD with an energy threshold.

Stack as FLoRA (``sum_i p_i s_i B_i A_i``), take the thin SVD from the stacked factors and keep,
per module, the smallest rank ``p`` whose squared-singular-value energy reaches ``tau``:
``delta = U_p S_p V_p^T``. ``tau = 1`` keeps every direction and equals FLoRA.
Clients merge ``delta`` into the frozen weight and start a fresh adapter; each receives the
rank-``p`` global adapter: ``p (m + n)`` values per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from raflora.aggregation.method import Method, option
from raflora.aggregation.numerics import stable_svd
from raflora.aggregation.result import MergeResult
from raflora.aggregation.stacking import fedavg_stacks
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


def energy_rank(S: torch.Tensor, tau: float) -> int:
    """Smallest ``p`` with ``sum_{j<=p} S_j^2 >= tau * sum_j S_j^2`` (at least 1)."""
    energy = S.double().square()
    total = float(energy.sum())
    if total == 0.0 or tau >= 1.0:
        return max(1, int(S.shape[0]))
    cumulative = torch.cumsum(energy, 0) / total
    # tau on S's device: searchsorted refuses a CPU value against a CUDA sequence.
    target = torch.tensor([tau], dtype=torch.float64, device=S.device)
    return int(torch.searchsorted(cumulative, target).item()) + 1


@dataclass
class FLoRIST(Method):
    """FLoRIST: FLoRA's stack truncated, per module, to the smallest rank holding ``tau`` of the energy."""

    name: ClassVar[str] = "florist"
    merges_into_base: ClassVar[bool] = True
    result_type: ClassVar[type] = MergeResult

    tau: float = option(
        0.9,
        help="energy threshold in (0, 1]: keep the smallest rank whose share of the "
        "squared singular values reaches tau (1 keeps every direction: flora)",
    )

    def check(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"florist: tau must be in (0, 1], got {self.tau}")

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        factors = {}
        for m, stack in fedavg_stacks(checked).items():
            U, S, V = stable_svd(stack.B, stack.A)
            p = min(energy_rank(S, self.tau), S.shape[0])
            factors[m] = LowRank(A=V[:, :p].T.contiguous(), B=U[:, :p] * S[:p])
        return factors
