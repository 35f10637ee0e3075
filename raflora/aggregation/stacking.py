"""Stacked factors: ``sum_i s_i B_i diag(c_i) A_i`` as one ``(m, R) @ (R, n)`` product, ``R = sum r_i``.

This is how FLoRA, FlexLoRA, FLoRIST and raFLoRA combine clients without forming the dense
``m x n`` sum: the weights go into the rows of the stacked ``A``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from raflora.lora import LoRAFactors, LowRank


def stack_factors(factors: Sequence[LoRAFactors], column_weights: Sequence[Tensor]) -> LowRank:
    """``LowRank(B_st, A_st)`` with ``B_st @ A_st = sum_i s_i B_i diag(c_i) A_i``.

    ``column_weights[i]`` is a length-``r_i`` tensor ``c_i`` (a constant ``p_i`` for FedAvg-style
    weighting, raFLoRA's partition weights otherwise).
    """
    B_st = torch.cat([f.B for f in factors], dim=1)
    # One in-place scaling of the stacked rows: the same products as scaling each client's A
    # first, without a temporary per client.
    rows = torch.cat([f.scale * c.to(dtype=f.A.dtype, device=f.A.device) for f, c in zip(factors, column_weights)])
    A_st = torch.cat([f.A for f in factors], dim=0).mul_(rows[:, None])
    return LowRank(B_st, A_st)


def constant_weights(factors: Sequence[LoRAFactors], weights: Sequence[float]) -> list[Tensor]:
    """``c_i = p_i`` for every column of client ``i``."""
    return [torch.full((f.rank,), float(w), dtype=torch.float64) for f, w in zip(factors, weights)]


def fedavg_stacks(checked) -> dict[str, LowRank]:
    """Per module, the stack of ``sum_i p_i s_i B_i A_i`` over the accepted updates."""
    weights = checked.weights
    stacks = {}
    for m in checked.modules:
        fs = [u.factors[m] for u in checked.updates]
        stacks[m] = stack_factors(fs, constant_weights(fs, weights))
    return stacks
