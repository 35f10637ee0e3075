"""carryover: FlexLoRA with the previous global update carried over (this library's own method).

Not from a paper: designed here from what raflora's diagnostics showed (docs/results.md,
docs/methods.md). Write client ``i``'s upload as the start it received plus its local change,
``s_i B_i A_i = G_t^(r_i) + dW_i``, where ``G_t^(r)`` is the best rank-``r`` approximation of the
previous global update ``G_t = sum_j sigma_j u_j v_j^T``. Then

    G_{t+1} = sum_i p_i s_i B_i A_i + sum_{j <= r_top} (1 - q_j) sigma_j u_j v_j^T,
    q_j = sum_{i: r_i >= j} p_i        (the weight of the clients that received direction j)

     = sum_{j <= r_top} sigma_j u_j v_j^T + sum_i p_i dW_i.

- No rank collapse: direction ``j`` of ``G_t`` comes back at weight ``q_j`` from the clients that
  received it and ``1 - q_j`` from the server, so its carry-over is exactly 1 (FlexLoRA's is
  ``q_j < 1``: the higher directions shrink geometrically). A round that reaches no rank-16 client
  keeps directions 9-16 whole (raflora with its default ``empty_partition = "drop"`` loses them).
- No amplification: every local change enters at its data share ``p_i`` (raflora divides the
  changes in partition ``k`` by ``q_k``, up to 5x for a partition two of ten clients reach).
- Homogeneous ranks with every client reaching ``r_top``: ``q_j = 1``, exactly FlexLoRA. Round 1
  (no previous update): FlexLoRA.

``r_top`` is the largest rank of the federation (the directions any client can receive); the
previous update's directions beyond it are dropped, as every SVD method drops them. A client of
rank ``r`` starts from the best rank-``r`` approximation of ``G_{t+1}`` (as FlexLoRA).
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from raflora.aggregation.method import Method
from raflora.aggregation.numerics import stable_svd
from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import append_components, fedavg_stacks
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


def carried_weights(ranks: list[int], weights: list[float], top: int) -> torch.Tensor:
    """``1 - q_j`` for ``j = 1 .. top``, ``q_j`` the summed weight of the ranks that reach ``j``."""
    return torch.tensor(
        [1.0 - sum(p for r, p in zip(ranks, weights) if r >= j) for j in range(1, top + 1)], dtype=torch.float64
    )


@dataclass
class Carryover(Method):
    """carryover (this library's own): FlexLoRA plus the previous update's unreturned share."""

    name: ClassVar[str] = "carryover"
    result_type: ClassVar[type] = SVDResult

    @classmethod
    def read_legacy_rule(cls, rule, options):
        if rule == "drop":  # the round never passed it the previous update: it ran as FlexLoRA
            return "flexlora", {}, "flexlora, which carryover ran as without the previous global update"
        return cls.name, dict(options), f"{cls.name}, whose own rule it was"

    @property
    def wants_previous(self) -> bool:
        return True  # always: the method is built on the previous global update

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        return fedavg_stacks(checked)

    def carry(self, factors, previous, checked, module, top_rank):
        if previous is None:
            return factors
        ranks = checked.ranks(module)
        top = top_rank if top_rank is not None else max(ranks)
        like = {"dtype": factors.dtype, "device": factors.device}
        U, S, V = stable_svd(previous.B.to(**like), previous.A.to(**like), top=top)
        k = min(top, S.shape[0])
        w = carried_weights(ranks, checked.weights, k).to(dtype=S.dtype, device=S.device)
        return append_components(factors, A=V[:, :k].T, B=U[:, :k] * (S[:k] * w))
