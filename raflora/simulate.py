"""Rank collapse without training: the mechanism in isolation.

Each round every client receives its rank-``r_i`` start from the global result
(``client_factors``), adds a small random update and sends it back. Rank-agnostic weighting
(FlexLoRA) multiplies the carried-over energy of direction ``j > r_min`` by
``q_j = sum_{i: r_i >= j} p_i < 1`` every round, so ``rho_{r_min}`` climbs to 1; raFLoRA's
partition weights keep every direction's carry-over at 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from raflora.aggregation import aggregate, method_named
from raflora.lora import ClientUpdate, LoRAFactors, energy_ratio


@dataclass
class CollapseTrace:
    method: str
    ranks: list[int]
    rho: list[float] = field(default_factory=list)  # rho_{r_min} after each round (index 0: start)


def simulate_collapse(
    method: str,
    ranks: Sequence[int],
    num_examples: Sequence[int] | None = None,
    rounds: int = 30,
    m: int = 64,
    n: int = 48,
    noise: float = 0.01,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **options,
) -> CollapseTrace:
    """Run the no-training loop for one module and record ``rho_{r_min}`` per round.

    Starts from a rank-``r_max`` update with a flat spectrum (``rho_{r_min} = r_min / r_max``).
    """
    g = torch.Generator().manual_seed(seed)
    ranks = [int(r) for r in ranks]
    r_min, r_max = min(ranks), max(ranks)
    sizes = list(num_examples) if num_examples is not None else [1] * len(ranks)
    U, _ = torch.linalg.qr(torch.randn(m, r_max, generator=g, dtype=dtype))
    V, _ = torch.linalg.qr(torch.randn(n, r_max, generator=g, dtype=dtype))
    start = [ClientUpdate(i, {"w": LoRAFactors(A=V.T.contiguous(), B=U.clone(), scale=1.0)}, 1) for i in range(1)]
    result = aggregate("flexlora", start)
    trace = CollapseTrace(method, ranks)
    wants_previous = method_named(method, **options).wants_previous
    trace.rho.append(energy_ratio(result.singular_values("w"), r_min))
    for _ in range(rounds):
        updates = []
        for i, (r, size) in enumerate(zip(ranks, sizes)):
            f = result.client_factors("w", r, scale=1.0)
            A = f.A + noise * torch.randn(f.A.shape, generator=g, dtype=dtype)
            B = f.B + noise * torch.randn(f.B.shape, generator=g, dtype=dtype)
            updates.append(ClientUpdate(i, {"w": LoRAFactors(A=A, B=B, scale=1.0)}, size))
        # a method that reads the previous global update (wants_previous) gets it, as in a federation
        previous = {"w": result.delta_factors("w")} if wants_previous else None
        result = aggregate(method, updates, previous=previous, top_rank=r_max, **options)
        trace.rho.append(energy_ratio(result.singular_values("w"), r_min))
    return trace
