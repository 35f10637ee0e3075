"""FedSA-LoRA (Guo et al., ICLR 2025): only ``A`` is aggregated; each client keeps its ``B``.

``A_avg = sum_i p_i A_i`` (zero-padded to the largest rank). The reported ``delta`` is the
weighted mean of the clients' personalised updates with the new ``A``:
``sum_i p_i s_i B_i A_avg[:r_i]``. Sends and receives ``r n`` values per module.

Option ``sfed_alpha`` applies SFed-LoRA's scale (arXiv 2603.08058) ``gamma_i = alpha sqrt(N / r_i)``
in place of each client's own scale, ``N = num_clients`` (default: the number of accepted updates).
"""

from __future__ import annotations

import torch

from raflora.aggregation.result import SharedAResult
from raflora.aggregation.stacking import constant_weights, stack_factors
from raflora.aggregation.validate import Checked
from raflora.lora import ClientUpdate, LoRAFactors, lora_scale


def _with_sfed_scale(checked: Checked, alpha: float, num_clients: int) -> None:
    checked.updates = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(f.A, f.B, lora_scale("sfed", alpha, f.rank, num_clients)) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in checked.updates
    ]


def aggregate_fedsa(
    checked: Checked, seed: int = 0, sfed_alpha: float | None = None, num_clients: int | None = None
) -> SharedAResult:
    if sfed_alpha is not None:
        _with_sfed_scale(checked, float(sfed_alpha), int(num_clients or len(checked.updates)))
    weights = checked.weights
    factors, shared_a, own_b = {}, {}, {}
    for m in checked.modules:
        fs = [u.factors[m] for u in checked.updates]
        r_max = max(f.rank for f in fs)
        A = torch.zeros((r_max, fs[0].A.shape[1]), dtype=checked.dtype, device=checked.device)
        for f, w in zip(fs, weights):
            A[: f.rank] += w * f.A
        shared_a[m] = A
        own_b[m] = {u.client_id: f.B for u, f in zip(checked.updates, fs)}
        with_shared = [LoRAFactors(A[: f.rank], f.B, f.scale) for f in fs]
        factors[m] = stack_factors(with_shared, constant_weights(with_shared, weights))
    return SharedAResult("fedsa", checked, factors, shared_a, own_b, seed)
