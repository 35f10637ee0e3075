"""HetLoRA (Cho et al., EMNLP 2024, arXiv 2401.06432).

Server: zero padding with "sparsity-weighted" aggregation: per module, client ``i`` is weighted by
``w_i = ||s_i B_i A_i||_F / sum_j ||s_j B_j A_j||_F`` (the Frobenius norm of its reconstructed
update, computed from the factors as ``sqrt(sum((B^T B) * (A A^T)))``). When every norm is 0 the
weights fall back to ``p_i``. A client of rank ``r`` gets the first ``r`` components.

Client (optional, :func:`tail_penalty` and :func:`self_prune`): rank self-pruning. During local
training a regulariser ``lambda * ||B[:, k:]||_F * ||A[k:]||_F`` with ``k = floor(gamma r)`` pushes
the tail components down; after training, if that tail norm product fell below the one received,
the client prunes itself to rank ``max(r_min, k)``. The paper's exact rule is not public; this is
the form used by the known re-implementations (see docs/methods.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from raflora.aggregation.method import Method
from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import TruncationResult
from raflora.aggregation.validate import Checked
from raflora.lora import LoRAFactors, LowRank, product_frobenius_norm


def norm_weights(factors: list[LoRAFactors], fallback: list[float]) -> list[float]:
    norms = [float(f.scale * product_frobenius_norm(f.B, f.A)) for f in factors]
    total = sum(norms)
    if total <= 0.0:
        return list(fallback)
    return [x / total for x in norms]


@dataclass
class HetLoRA(Method):
    """HetLoRA: zero padding with clients weighted by the norm of their update."""

    name: ClassVar[str] = "hetlora"
    result_type: ClassVar[type] = TruncationResult

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        fallback = checked.weights
        factors = {}
        for m in checked.modules:
            module_factors = [u.factors[m] for u in checked.updates]
            factors[m] = average_factors(module_factors, norm_weights(module_factors, fallback))
        return factors


def tail_penalty(A: Tensor, B: Tensor, gamma: float) -> Tensor:
    """``||B[:, k:]||_F * ||A[k:]||_F`` with ``k = floor(gamma * r)`` (0 when nothing is beyond k)."""
    k = int(math.floor(gamma * A.shape[0]))
    if k >= A.shape[0]:
        return A.new_zeros(())
    return torch.linalg.norm(B[:, k:]) * torch.linalg.norm(A[k:])


def self_prune(received: LoRAFactors, trained: LoRAFactors, gamma: float, r_min: int) -> LoRAFactors:
    """Prune ``trained`` to rank ``max(r_min, floor(gamma r))`` if its tail shrank during training."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"self_prune: gamma must be in (0, 1], got {gamma}")
    before = float(tail_penalty(received.A, received.B, gamma))
    after = float(tail_penalty(trained.A, trained.B, gamma))
    # At least 1: a rank-0 adapter is not an update (aggregate would refuse the client).
    new_rank = max(1, int(r_min), int(math.floor(gamma * trained.rank)))
    if after < before and new_rank < trained.rank:
        return LoRAFactors(A=trained.A[:new_rank].clone(), B=trained.B[:, :new_rank].clone(), scale=trained.scale)
    return trained
