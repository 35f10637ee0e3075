"""LoRA-FAIR (Bian, Wang, Zhang, Xu, "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", ICCV 2025, arXiv 2411.14961): FedAvg of the factors, then a server-side
correction of ``B`` towards the ideal update.

Server, per module (scales folded into ``B``; clients of lower rank zero-padded to the largest):

    A_avg = sum_i p_i A_i       B_avg = sum_i p_i s_i B_i       dW = sum_i p_i s_i B_i A_i
    B' = B_avg + dB,   dB = argmin  1 - cos(dW, (B_avg + dB) A_avg) + lam ||dB||_F^2 / ||B_avg||_F^2
    delta = B' @ A_avg

and every client starts from ``(A_avg, B')`` ("Avg-Initial"; a client of rank ``r`` from its first
``r`` components, its scale divided out). The minimisation runs ``steps`` gradient steps from
``dB = 0`` on ``D = dB / ||B_avg||_F`` with the fixed step ``step_size * ||B_avg A_avg||_F^2 /
(||B_avg||_F^2 lambda_max(A_avg A_avg^T))`` (a bound on the cosine's curvature, so the step is
stable whatever the scale of the factors). ``cos(X, Y) = <X, Y>_F / (||X||_F ||Y||_F)``. Only
``dW A_avg^T = sum_i p_i s_i B_i (A_i A_avg^T)`` (``m x r``), ``A_avg A_avg^T`` and ``||dW||_F``
(from the stacked factors' Gram matrices) are needed: the dense ``m x n`` ``dW`` is never formed.

What the paper gives and what was decided here (docs/methods.md, "lora_fair"):

- From the paper: FedAvg of ``A`` and ``B``, a residual ``dB`` on ``B`` only (``A_avg`` kept),
  found on the server by minimising a cosine-similarity correction term plus ``lambda ||dB||``
  with ``lambda = 0.01``, solved by SGD; clients start from ``(A_avg, B_avg + dB)``; one rank
  for every client.
- Decided here (not public: the solver's steps and step size, whether the norm is squared):
  the regulariser is the **squared** norm **relative to** ``||B_avg||_F`` (smooth, so a fixed
  number of plain gradient steps is well defined, and ``lam`` means the same on any model and
  ``alpha / r``); the solver is full-batch gradient descent from ``dB = 0`` with the step above.
  ``steps = 0`` is FedIT (zero_pad for mixed ranks) exactly.
- Mixed ranks (the paper assumes one): zero padding of both factors, as zero_pad; the correction
  runs on the padded pair. A round whose ``B_avg``, ``dW`` or ``B_avg A_avg`` is zero is left
  uncorrected (the cosine is undefined).
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from raflora.aggregation.method import Method, option
from raflora.aggregation.padding import average_factors
from raflora.aggregation.result import TruncationResult
from raflora.aggregation.stacking import constant_weights, stack_factors
from raflora.aggregation.validate import Checked
from raflora.lora import LoRAFactors, LowRank, product_frobenius_norm


def ideal_cross(factors: list[LoRAFactors], weights: list[float], A_avg: Tensor) -> Tensor:
    """``dW @ A_avg^T = sum_i p_i s_i B_i (A_i A_avg^T)`` (``m x r_max``) without forming ``dW``."""
    terms = ((p * f.scale) * (f.B.double() @ (f.A.double() @ A_avg.T)) for f, p in zip(factors, weights))
    out = next(terms)  # a round has at least one accepted update
    for term in terms:
        out = out + term
    return out


def corrected_b(
    B_avg: Tensor, A_avg: Tensor, cross: Tensor, ideal_norm: float, lam: float, steps: int, step_size: float
) -> Tensor:
    """``B_avg + dB`` after ``steps`` gradient steps on ``1 - cos(dW, B A_avg) + lam ||D||^2``,
    ``B = B_avg + ||B_avg|| D`` (float64 in, float64 out)."""
    G = A_avg @ A_avg.T
    size = float(torch.linalg.norm(B_avg))
    start = float(((B_avg @ G) * B_avg).sum().clamp_min(0.0))  # ||B_avg A_avg||_F^2
    top = float(torch.linalg.eigvalsh(G)[-1]) if G.numel() else 0.0
    if steps == 0 or size == 0.0 or ideal_norm == 0.0 or start == 0.0 or top <= 0.0:
        return B_avg
    if not all(math.isfinite(x) for x in (size, start, top, ideal_norm)):
        return B_avg
    step = step_size * start / (size * size * top)
    D = torch.zeros_like(B_avg)
    for _ in range(steps):
        B = B_avg + size * D
        BG = B @ G
        norm = float((BG * B).sum().clamp_min(0.0)) ** 0.5
        if norm == 0.0:
            break
        inner = float((B * cross).sum())
        grad_cos = (cross - (inner / (norm * norm)) * BG) / (ideal_norm * norm)
        D = D - step * (2.0 * lam * D - size * grad_cos)
    return B_avg + size * D


@dataclass
class LoRAFAIR(Method):
    """LoRA-FAIR: FedAvg of the factors with ``B`` corrected towards the ideal update on the server."""

    name: ClassVar[str] = "lora_fair"
    citation: ClassVar[str] = "Bian, Wang, Zhang, Xu, ICCV 2025 (arXiv 2411.14961)"
    result_type: ClassVar[type] = TruncationResult

    lam: float = option(
        0.01,
        help="weight of the regulariser ||dB||^2 / ||B_avg||^2 against 1 - cos(ideal, corrected) "
        "(the paper's lambda = 0.01; 0: the cosine alone)",
    )
    steps: int = option(100, help="gradient steps of the server's correction of B (0: no correction, fedit)")
    step_size: float = option(0.5, help="gradient step in (0, 1], relative to the cosine's curvature bound")

    def check(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0.0 <= self.lam < math.inf:
            raise ValueError(f"lora_fair: lam must be a finite number >= 0, got {self.lam!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"lora_fair: steps must be an integer >= 0, got {self.steps!r}")
        size = self.step_size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0.0 < size <= 1.0:
            raise ValueError(f"lora_fair: step_size must be in (0, 1], got {size!r}")

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        weights = checked.weights
        out = {}
        for m in checked.modules:
            fs = [u.factors[m] for u in checked.updates]
            averaged = average_factors(fs, weights)
            if self.steps == 0:
                out[m] = averaged
                continue
            A_avg = averaged.A.double()
            stack = stack_factors(fs, constant_weights(fs, weights))
            ideal_norm = float(product_frobenius_norm(stack.B.double(), stack.A.double()))
            cross = ideal_cross(fs, weights, A_avg)
            B = corrected_b(averaged.B.double(), A_avg, cross, ideal_norm, self.lam, self.steps, self.step_size)
            out[m] = LowRank(A=averaged.A, B=B.to(averaged.B.dtype))
        return out
