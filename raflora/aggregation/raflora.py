"""raFLoRA (Wu, Hu, Min, Wang, arXiv 2602.13486): rank-partitioned aggregation.

Rank levels ``l_1 < ... < l_K`` (option ``rank_levels``: the federation's rank set; default the
ranks present in the round) split the components into partitions ``P_k = (l_{k-1}, l_k]``.
Component ``j`` of client ``i`` lies in ``P_k(j)`` and is weighted by
``c_ij = p_i / sum_{i': r_i' >= l_k(j)} p_i'``, the client's share among those that reach the
partition, so no partition is diluted by clients that cannot contribute to it:

    delta = sum_k sum_{i: r_i >= l_k} c_ik s_i B_i[:, P_k] A_i[P_k] = sum_i s_i B_i diag(c_i) A_i

A client of rank ``r`` starts from the best rank-``r`` approximation of ``delta`` (as FlexLoRA).
Homogeneous ranks give ``K = 1`` and ``c_ij = p_i``: exactly FlexLoRA. A partition no client
reaches contributes nothing to the round's stack (option ``empty_partition = "drop"``, the default,
as published); with ``empty_partition = "keep"`` it keeps its previous global component instead
(:func:`keep_unreached`: the method then asks for the previous global update, ``wants_previous``),
which measured worse on text and on Fashion-MNIST (docs/results.md, experiments 8 and 8c).
An update whose rank is not a level is refused.

Option ``weighting = "uniform"`` uses ``p_i = 1 / N`` in place of the data share (secondary
sources of the paper disagree on which it uses; ``"data"`` is the default).
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch

from raflora.aggregation.method import Method, Refusals, option
from raflora.aggregation.numerics import stable_svd
from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import append_components, stack_factors
from raflora.aggregation.validate import Checked
from raflora.lora import LowRank


def partition_weights(ranks: Sequence[int], weights: Sequence[float], levels: Sequence[int]) -> list[torch.Tensor]:
    """Per-component weights ``c_i`` (length ``r_i``) of raFLoRA's rank-partitioned average."""
    levels = sorted(set(levels))
    out = []
    for r, p in zip(ranks, weights):
        c = torch.empty(r, dtype=torch.float64)
        low = 0
        for level in levels:
            if low >= r:
                break
            if all(rr >= level for rr in ranks):
                # Every client reaches it: the share is p itself. Dividing by sum(p), which
                # rounding can leave a hair off 1, would break "homogeneous ranks == FlexLoRA".
                c[low : min(level, r)] = p
            else:
                reach = sum(w for rr, w in zip(ranks, weights) if rr >= level)
                c[low : min(level, r)] = p / reach
            low = level
        out.append(c)
    return out


def keep_unreached(factors: LowRank, previous: LowRank | None, reached: int, top_rank: int | None) -> LowRank:
    """``factors`` plus the components ``reached + 1 .. top_rank`` of ``previous`` (its singular
    directions in descending order): a rank partition that no update of this round reaches keeps
    its previous global component instead of losing it."""
    if previous is None:
        return factors
    top = top_rank if top_rank is not None else previous.A.shape[0]
    if top <= reached:
        return factors
    B, A = (t.to(dtype=factors.dtype, device=factors.device) for t in (previous.B, previous.A))
    U, S, V = stable_svd(B, A, top=top)
    tail = slice(reached, min(top, S.shape[0]))
    return append_components(factors, A=V[:, tail].T, B=U[:, tail] * S[tail])


WEIGHTINGS = ("data", "uniform")
EMPTY_PARTITIONS = ("drop", "keep")


@dataclass
class RaFLoRA(Method):
    """raFLoRA: each rank partition averaged over the clients that reach it."""

    name: ClassVar[str] = "raflora"
    result_type: ClassVar[type] = SVDResult

    rank_levels: list[int] = option(
        factory=list,
        help="the federation's rank set, which splits the components "
        "into partitions ([]: the clients' ranks; each client rank must be a level)",
    )
    weighting: str = option(
        "data",
        help="client weight inside a partition: data (its share of the examples, "
        "p_i) or uniform (every contributing client alike)",
    )

    # drop: a partition nobody reaches contributes nothing (as published); keep: measured worse on
    # text and images (docs/results.md, experiment 8)
    empty_partition: Literal["drop", "keep"] = option(
        "drop",
        help="drop | keep: a rank partition no client of the round reaches loses its previous global "
        "component (as published) or keeps it",
    )

    def check(self) -> None:
        if self.empty_partition not in EMPTY_PARTITIONS:
            raise ValueError(
                f"raflora: empty_partition {self.empty_partition!r} is not known; "
                f"choose one of {', '.join(EMPTY_PARTITIONS)}"
            )
        if any(int(level) < 1 for level in self.rank_levels):
            raise ValueError(f"raflora: rank_levels must be positive integers, got {list(self.rank_levels)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"raflora: weighting {self.weighting!r} is not known; choose one of {', '.join(WEIGHTINGS)}"
            )

    def check_ranks(self, client_ranks):
        ranks = sorted(set(client_ranks))
        if self.rank_levels and not set(ranks) <= set(self.rank_levels):
            raise ValueError(f"raflora: rank_levels {list(self.rank_levels)} must include every client rank {ranks}")

    def rank_partitions(self, client_ranks):
        return sorted(set(self.rank_levels) | set(client_ranks))

    def bind(self, client_ranks, num_sampled):
        return replace(self, rank_levels=sorted(set(self.rank_levels) | set(client_ranks)))

    @classmethod
    def read_legacy_rule(cls, rule, options):
        options = {"empty_partition": rule, **options}
        return cls.name, options, f'raflora with federation.method.empty_partition = "{options["empty_partition"]}"'

    @property
    def wants_previous(self) -> bool:
        return self.empty_partition == "keep"

    def carry(self, factors, previous, checked, module, top_rank):
        return keep_unreached(factors, previous, max(checked.ranks(module)), top_rank)

    def refuse(self, checked: Checked, seed: int) -> Refusals:
        if not self.rank_levels:
            return {}
        levels = sorted({int(level) for level in self.rank_levels})
        refused: Refusals = {}
        for m in checked.modules:
            for i, (u, r) in enumerate(zip(checked.updates, checked.ranks(m))):
                if r not in levels and i not in refused:
                    refused[i] = (
                        m,
                        f"client {u.client_id!r}: module {m!r}: rank {r} is not one of the "
                        f"federation's rank_levels {levels}",
                    )
        return refused

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        n = len(checked.updates)
        weights = checked.weights if self.weighting == "data" else [1.0 / n] * n
        factors: dict[str, LowRank] = {}
        for m in checked.modules:
            ranks = checked.ranks(m)
            levels = self.rank_levels or sorted(set(ranks))
            fs = [u.factors[m] for u in checked.updates]
            factors[m] = stack_factors(fs, partition_weights(ranks, weights, levels))
        return factors
