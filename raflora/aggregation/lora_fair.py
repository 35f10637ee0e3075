"""LoRA-FAIR (Bian, Wang, Zhang, Xu, "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", ICCV 2025, arXiv 2411.14961): FedAvg of the factors, then a server-side
correction of ``B`` towards the ideal update.

Server, per module (scales folded into ``B``; clients of lower rank zero-padded to the largest):

    A_avg = sum_i p_i A_i       B_avg = sum_i p_i s_i B_i       dW = sum_i p_i s_i B_i A_i
    B' = B_avg + dB,   dB = argmin  1 - cos(dW, (B_avg + dB) A_avg) + lam ||dB||_F^2 / ||B_avg||_F^2
    delta = B' @ A_avg

and every client starts from ``(A_avg, B')`` ("Avg-Initial"; a client of rank ``r`` from its first
``r`` components, its scale divided out). ``cos(X, Y) = <X, Y>_F / (||X||_F ||Y||_F)``. The
minimisation runs ``steps`` gradient steps from ``dB = 0`` on ``D = dB / ||B_avg||_F`` (objective
``f(D)``, ``X = (B_avg + ||B_avg||_F D) A_avg``, gradient ``g``), each of length

    step_size / (1 / tau + 2 lam),   tau = (2 ||X|| / (sqrt(K) + sqrt(K + 4 u ||X||)))^2,
    K = (2 / sqrt(3)) ||B_avg||_F^2 lambda_max(A_avg A_avg^T),   u = ||B_avg||_F ||g A_avg||_F

Why: the Hessian of ``X -> cos(dW, X)`` has norm at most ``(2 / sqrt(3)) / ||X||^2`` (tight), so
``f``'s is at most ``K / ||X||^2 + 2 lam``; along a step ``t``, ``X`` moves by at most ``t u``, and
``tau`` is the largest ``t`` with ``K / (||X|| - t u)^2 <= 1 / t``. So no step is longer than
the inverse of the curvature bound over the segment it covers, and ``f`` never increases (each
step lowers it by at least ``step ||g||^2 / 2``), whatever the scale of the factors and however
small ``X`` gets. (A fixed step from the curvature at the start is not enough: ``X`` often shrinks
during the descent, and such a step then overshoots, so ``f`` rises and rounding errors grow.) Only
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
  ``alpha / r``); the solver is full-batch gradient descent from ``dB = 0`` with the step above
  (``step_size = 1``: the full step the bound allows).
  ``steps = 0`` is FedIT (zero_pad for mixed ranks) exactly.
- Mixed ranks (the paper assumes one): zero padding of both factors, as zero_pad; the correction
  runs on the padded pair. A round whose ``B_avg``, ``dW`` or ``B_avg A_avg`` is zero is left
  uncorrected (the cosine is undefined).
Sends and receives ``r_i (m + n)`` values per module.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator
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


# The Hessian of X -> cos(W, X) has spectral norm at most 2 / sqrt(3) / ||X||_F^2 (tight; its
# eigenvalues are -cos and (-cos +- sqrt(4 - 3 cos^2)) / 2, over ||X||^2).
COSINE_CURVATURE = 2.0 / math.sqrt(3.0)


def safe_step(norm: float, speed: float, curvature: float, lam: float) -> float:
    """``1 / (1 / tau + 2 lam)`` with ``tau K = (||X|| - tau u)^2`` (``norm`` = ``||X||``,
    ``speed`` = ``u``, ``curvature`` = ``K``): as ``sqrt(tau)`` solves ``u y^2 + sqrt(K) y = ||X||``,
    ``tau = (2 ||X|| / (sqrt(K) + sqrt(K + 4 u ||X||)))^2``."""
    root = math.sqrt(curvature)
    tau = (2.0 * norm / (root + math.sqrt(curvature + 4.0 * speed * norm))) ** 2
    return 1.0 / (1.0 / tau + 2.0 * lam)


def descent(
    B_avg: Tensor, A_avg: Tensor, cross: Tensor, ideal_norm: float, lam: float, step_size: float
) -> Iterator[Tensor]:
    """``B_avg``, then ``B = B_avg + ||B_avg|| D`` after each gradient step on ``1 - cos(dW, B A_avg)
    + lam ||D||^2`` (float64 in, float64 out); nothing after ``B_avg`` where the cosine is undefined."""
    yield B_avg
    G = A_avg @ A_avg.T
    size = float(torch.linalg.norm(B_avg))
    start = float(((B_avg @ G) * B_avg).sum().clamp_min(0.0))  # ||B_avg A_avg||_F^2
    top = float(torch.linalg.eigvalsh(G)[-1]) if G.numel() else 0.0
    if size == 0.0 or ideal_norm == 0.0 or start == 0.0 or top <= 0.0:
        return
    if not all(math.isfinite(x) for x in (size, start, top, ideal_norm)):
        return
    curvature = COSINE_CURVATURE * size * size * top
    D = torch.zeros_like(B_avg)
    while True:
        B = B_avg + size * D
        BG = B @ G
        norm = float((BG * B).sum().clamp_min(0.0)) ** 0.5
        if norm == 0.0:
            return
        inner = float((B * cross).sum())
        grad_cos = (cross - (inner / (norm * norm)) * BG) / (ideal_norm * norm)
        grad = 2.0 * lam * D - size * grad_cos
        speed = size * float(((grad @ G) * grad).sum().clamp_min(0.0)) ** 0.5  # ||d X / d step||
        D = D - step_size * safe_step(norm, speed, curvature, lam) * grad
        yield B_avg + size * D


def corrected_b(
    B_avg: Tensor, A_avg: Tensor, cross: Tensor, ideal_norm: float, lam: float, steps: int, step_size: float
) -> Tensor:
    """``B_avg + dB`` after ``steps`` steps of ``descent`` (fewer where the cosine is undefined)."""
    (last,) = deque(itertools.islice(descent(B_avg, A_avg, cross, ideal_norm, lam, step_size), steps + 1), maxlen=1)
    return last


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
    step_size: float = option(
        1.0, help="gradient step in (0, 1], relative to the largest step a curvature bound proves safe"
    )

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
