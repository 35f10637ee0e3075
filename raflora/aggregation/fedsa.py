"""FedSA-LoRA (Guo et al., ICLR 2025): only ``A`` is aggregated; each client keeps its ``B``.

``A_avg = sum_i p_i A_i`` (zero-padded to the largest rank) is the only global part; the server
never holds a client's ``B`` (clients upload ``A`` only and keep ``B`` for themselves), so there is
no global update ``delta``: each client's model is its own ``s_i B_i A_avg[:r_i]``, and the
runtimes evaluate those personalised models on the clients. Sends and receives ``r n`` values
per module.

Option ``sfed_alpha`` gives clients SFed-LoRA's scale (arXiv 2603.08058)
``gamma_r = alpha sqrt(N / r)`` in place of the config's ``lora.scaling``, ``N = num_clients``
(default: the clients sampled per round).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from raflora.aggregation.method import Method, option
from raflora.aggregation.result import SharedAResult
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank, lora_scale


@dataclass
class FedSALoRA(Method):
    """FedSA-LoRA: ``A`` averaged and shared, each client's ``B`` kept on the client."""

    name: ClassVar[str] = "fedsa"
    uploads: ClassVar[str] = "A"
    private: ClassVar[str] = "B"
    result_type: ClassVar[type] = SharedAResult

    sfed_alpha: float = option(
        0.0,
        help="> 0: clients train with SFed-LoRA's scale alpha * sqrt(N / r) in "
        "place of lora.scaling's (0: off); at most 1e4",
    )
    num_clients: int = option(0, help="SFed-LoRA's N (0: the clients sampled per round)")

    def check(self) -> None:
        if not 0 <= self.sfed_alpha <= 1e4:  # far above any alpha that trains; 1e300 overflowed the scale
            raise ValueError(f"fedsa: sfed_alpha must be in [0, 1e4], got {self.sfed_alpha}")
        if self.num_clients < 0:
            raise ValueError(f"fedsa: num_clients must be >= 0, got {self.num_clients}")

    def bind(self, client_ranks, num_sampled):
        return self if self.num_clients else replace(self, num_clients=num_sampled)

    def scale_for(self, rank: int, scale: float) -> float:
        if self.sfed_alpha <= 0:
            return scale
        if not self.num_clients:
            raise ValueError("fedsa: sfed_alpha needs num_clients (bind() fills it with the clients sampled per round)")
        return lora_scale("sfed", self.sfed_alpha, rank, self.num_clients)

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        factors = {}
        for m in checked.modules:
            fs = [u.factors[m] for u in checked.updates]
            A = torch.zeros((max(f.rank for f in fs), fs[0].A.shape[1]), dtype=checked.dtype, device=checked.device)
            for f, w in zip(fs, weights):
                A[: f.rank] += w * f.A
            # Only A is global; B is zero here because the server has none of the clients' B.
            factors[m] = LowRank(A=A, B=torch.zeros((fs[0].B.shape[0], A.shape[0]), dtype=A.dtype, device=A.device))
        return factors
