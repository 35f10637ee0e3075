"""FFA-LoRA (Sun et al., ICLR 2024): ``A`` frozen at a shared seeded init, only ``B`` trained.

The frozen ``A`` of a module is ``init_a(module, r, n, seed)`` (nested, so a rank-``r`` client's
``A`` is the first ``r`` rows of the rank-``r_max`` one). ``B`` is averaged with zero padding and
scales folded in; the aggregate is then exact: ``delta = B_avg A_0 = sum_i p_i s_i B_i A_0[:r_i]``.
An update whose ``A`` is not the shared init is refused (it would silently break exactness).
Sends and receives ``m r`` values per module (``A`` is regenerated from the seed).
"""

from __future__ import annotations

import torch

from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import FrozenAResult
from raflora.aggregation.validate import Checked
from raflora.lora import init_a


def aggregate_ffa(checked: Checked, seed: int = 0) -> FrozenAResult:
    refuse = {}
    for module in checked.modules:
        n = checked.shapes[module][1]
        frozen = init_a(module, max(checked.ranks(module)), n, seed, checked.dtype).to(checked.device)
        tol = 1e-2 / n**0.5
        for i, u in enumerate(checked.updates):
            A = u.factors[module].A
            if i not in refuse and not torch.allclose(A, frozen[: A.shape[0]], rtol=0.0, atol=tol):
                refuse[i] = (module, f"client {u.client_id!r}: module {module!r}: A is not the shared frozen "
                             f"init (seed {seed}); ffa trains B only")
    if refuse:
        checked.reject(refuse)
    weights = checked.weights
    factors = {}
    for m in checked.modules:
        module_factors = [u.factors[m] for u in checked.updates]
        B, _ = average_factors(module_factors, weights)
        frozen = init_a(m, B.shape[1], checked.shapes[m][1], seed, checked.dtype).to(checked.device)
        factors[m] = (B, frozen)
    return FrozenAResult("ffa", checked, factors, seed)
