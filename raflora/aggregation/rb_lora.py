"""RB-LoRA (Ha, Oh, Jeon, "RB-LoRA: Rank-Balanced Aggregation for Low-Rank Adaptation with
Federated Fine-Tuning", Findings of EACL 2026; code ``seonha01/rb-lora``): rank-balanced factor
averaging, then SVD re-allocation.

Server, per module: pad every client's ``A`` rows and ``B`` columns (scale folded into ``B``) to
the largest rank, average the factors with the data shares ``p_i`` and multiply component ``j``
of both factors by the code's rank-balanced column weight ``c_j = sum_i n_i / sum_{i: r_i > j} n_i``:

    B_avg[:, j] = c_j sum_{i: r_i > j} p_i s_i B_i[:, j]      A_avg[j] = c_j sum_{i: r_i > j} p_i A_i[j]
    delta = B_avg @ A_avg

so each component is the average of the clients that have it (undiluted). A client of rank ``r``
starts from the best rank-``r`` approximation of ``delta`` (truncated SVD, its scale divided
out), as the code's ``distribute_lora_weights_with_svd`` hands back.

What is public and what was decided here (docs/methods.md, "rb_lora"):

- The paper's text is not public here; its abstract says rank-wise components "aligned using
  analytically derived weights". The code defines those weights
  (``compute_column_weights_from_ranks``) but its ``train.py`` never calls them: the method it runs
  as "RB-LoRA" is the data-weighted zero-padded factor average plus the SVD hand-back. Option
  ``rank_balanced = true`` (default) applies the weights, to both factors (a component that only a
  share ``q_j`` of the clients reach is then whole, not ``q_j^2`` of itself); ``false`` is the
  code's run exactly (zero padding with an SVD start instead of truncation).
- The column weights use the round's accepted clients (the code uses every client of the
  federation with the round's normalised sizes; both give "the average over the clients that
  have component j" when every client takes part).
- Scales are folded into ``B`` before averaging (the code averages raw factors of clients with
  different ``alpha / r``); the SVD comes from the factors (QR + a small core SVD), never from a
  dense ``m x n`` matrix (the code takes ``torch.svd`` of the dense product and reads its ``V`` as
  ``V^T``, peers.md section 2.4).
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raflora.aggregation.method import Method, option
from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import SVDResult
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


@dataclass
class RBLoRA(Method):
    """RB-LoRA: rank-balanced factor average; rank-``r`` clients start from its best rank-``r`` approximation."""

    name: ClassVar[str] = "rb_lora"
    citation: ClassVar[str] = "Ha, Oh, Jeon, Findings of EACL 2026 (code seonha01/rb-lora)"
    result_type: ClassVar[type] = SVDResult

    rank_balanced: bool = option(
        True,
        help="weight component j of both averaged factors by total examples / examples of the "
        "clients whose rank reaches j (the column weights of seonha01/rb-lora); false: plain zero "
        "padding, what that code's train.py runs as RB-LoRA",
    )

    def check(self) -> None:
        if not isinstance(self.rank_balanced, bool):
            raise ValueError(f"rb_lora: rank_balanced must be true or false, got {self.rank_balanced!r}")

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        return {
            m: average_factors([u.factors[m] for u in checked.updates], weights, renormalise=self.rank_balanced)
            for m in checked.modules
        }
