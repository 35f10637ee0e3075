"""Stacked factors: ``sum_i s_i B_i diag(c_i) A_i`` as one ``(m, R) @ (R, n)`` product, ``R = sum r_i``.

This is how FLoRA, FlexLoRA, FLoRIST, carryover and raFLoRA combine clients without forming the
dense ``m x n`` sum: the weights go into the rows of the stacked ``A``.

A :class:`Stack` keeps the clients' own factors and the per-column weights, not the stacked copy:
the stacked ``B`` and ``A`` are formed when they are read (by the SVD of one module, then dropped),
so a round's result holds no second copy of the uploads (issue 13: peak memory <= 1.5x the uploads
with every client's factors kept). It is a :class:`~raflora.lora.LowRank` whose ``.A`` and ``.B``
are formed when read (``.dense()``, ``.rank``, ``.dtype``, ``.device`` as well).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from raflora.aggregation.numerics import log2_norm
from raflora.aggregation.validate import Checked
from raflora.lora import LoRAFactors, LowRank


class Stack(LowRank):
    """``sum_i B_i diag(w_i) A_i`` kept as its parts; ``w_i`` (client scale times column weights,
    in ``A``'s dtype) multiplies the rows of ``A_i`` when the stacked ``A`` is formed."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[tuple[Tensor, Tensor, Tensor | None]]):
        # (B_i, A_i, w_i); w_i None: weight 1 (components appended as they are, e.g. kept ones)
        self.parts = tuple(parts)

    @property
    def rank(self) -> int:
        return sum(int(A.shape[0]) for _, A, _ in self.parts)

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0][1].dtype

    @property
    def device(self) -> torch.device:
        return self.parts[0][1].device

    @property
    def B(self) -> Tensor:
        """The stacked ``(m, R)`` B, formed now (a new tensor on every read)."""
        return torch.cat([B for B, _, _ in self.parts], dim=1)

    @property
    def A(self) -> Tensor:
        """The stacked, weighted ``(R, n)`` A, formed now: each part's rows scaled as they are
        copied in (one pass; the same products as scaling the concatenation)."""
        first = self.parts[0][1]
        out = torch.empty((self.rank, first.shape[1]), dtype=first.dtype, device=first.device)
        low = 0
        for _, A, w in self.parts:
            rows = out[low : low + A.shape[0]]
            if w is None:
                rows.copy_(A)
            else:
                torch.mul(A, w[:, None], out=rows)
            low += A.shape[0]
        return out

    def pair(self) -> LowRank:
        """The stacked ``LowRank(A=A, B=B)``, formed now."""
        return LowRank(A=self.A, B=self.B)

    def dense(self) -> Tensor:
        return self.B @ self.A

    def log2_norm_bounds(self) -> tuple[float, float]:
        """Upper bounds of ``log2 ||B||_F`` and ``log2 ||A||_F`` from the parts, without forming
        the stack (``||A_i diag(w_i)|| <= ||A_i|| max |w_i|``); never overflow."""

        def total(logs: list[float]) -> float:
            top = max(logs)
            if top == -math.inf:
                return top
            return top + 0.5 * math.log2(sum(2.0 ** (2 * (x - top)) for x in logs))

        b = total([log2_norm(B) for B, _, _ in self.parts])
        a = total([log2_norm(A) + (0.0 if w is None else _log2_peak(w)) for _, A, w in self.parts])
        return b, a

    def appended(self, *, A: Tensor, B: Tensor) -> Stack:
        """This stack with the components ``B @ A`` added after its own (weight 1)."""
        return Stack(self.parts + ((B, A, None),))


def _log2_peak(w: Tensor) -> float:
    peak = float(w.abs().max()) if w.numel() else 0.0
    return math.log2(peak) if peak > 0.0 else -math.inf


def append_components(factors: LowRank, *, A: Tensor, B: Tensor) -> LowRank:
    """``factors`` with the components ``B @ A`` appended (a kept or carried part of the previous
    update): a :class:`Stack` gains a part, a pair is concatenated."""
    if isinstance(factors, Stack):
        return factors.appended(A=A, B=B)
    return LowRank(A=torch.cat([factors.A, A], dim=0), B=torch.cat([factors.B, B], dim=1))


def stack_factors(factors: Sequence[LoRAFactors], column_weights: Sequence[Tensor]) -> Stack:
    """The :class:`Stack` of ``sum_i s_i B_i diag(c_i) A_i``.

    ``column_weights[i]`` is a length-``r_i`` tensor ``c_i`` (a constant ``p_i`` for FedAvg-style
    weighting, raFLoRA's partition weights otherwise).
    """
    return Stack(
        [(f.B, f.A, f.scale * c.to(dtype=f.A.dtype, device=f.A.device)) for f, c in zip(factors, column_weights)]
    )


def constant_weights(factors: Sequence[LoRAFactors], weights: Sequence[float]) -> list[Tensor]:
    """``c_i = p_i`` for every column of client ``i``."""
    return [torch.full((f.rank,), float(w), dtype=torch.float64) for f, w in zip(factors, weights)]


def fedavg_stacks(checked: Checked) -> dict[str, LowRank]:
    """Per module, the :class:`Stack` of ``sum_i p_i s_i B_i A_i`` over the accepted updates (typed
    as what ``combine`` returns)."""
    weights = checked.weights
    stacks: dict[str, LowRank] = {}
    for m in checked.modules:
        fs = [u.factors[m] for u in checked.updates]
        stacks[m] = stack_factors(fs, constant_weights(fs, weights))
    return stacks


class DenseUpdate(LowRank):
    """A global update kept as its dense ``(m, n)`` matrix: what a stack becomes when its rank
    ``R = sum r_i`` makes ``R (m + n)`` values more than ``m n`` (many clients, see
    :mod:`raflora.aggregation.streamed`). Reads as a ``LowRank(A=I, B=D)``; :meth:`dense` is ``D``."""

    __slots__ = ("matrix",)

    def __init__(self, matrix: Tensor):
        self.matrix = matrix

    @classmethod
    def of(cls, stack: Stack) -> DenseUpdate:
        """``sum_i B_i diag(w_i) A_i`` accumulated a few hundred components at a time (a product per
        client would pass over the ``m x n`` sum once per client; the whole stack is never formed)."""
        (B0, A0, _), *_ = stack.parts
        m, n = B0.shape[0], A0.shape[1]
        out = torch.zeros((m, n), dtype=A0.dtype, device=A0.device)
        chunk = max(64, min(m, n) // 2)
        group: list = []
        for i, part in enumerate(stack.parts):
            group.append(part)
            if sum(A.shape[0] for _, A, _ in group) >= chunk or i == len(stack.parts) - 1:
                piece = Stack(group)
                out.addmm_(piece.B, piece.A)
                group = []
        return cls(out)

    @property
    def rank(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    @property
    def B(self) -> Tensor:
        return self.matrix

    @property
    def A(self) -> Tensor:
        return torch.eye(self.matrix.shape[1], dtype=self.matrix.dtype, device=self.matrix.device)

    def pair(self) -> LowRank:
        return LowRank(A=self.A, B=self.matrix)

    def dense(self) -> Tensor:
        return self.matrix


def compact(factors, shape: tuple[int, int]):
    """The cheaper exact form of a global update once its parts may go: a :class:`Stack` becomes
    its stacked pair, or its dense matrix when that has fewer values; anything else is kept."""
    if not isinstance(factors, Stack):
        return factors
    m, n = shape
    if factors.rank * (m + n) >= m * n:
        return DenseUpdate.of(factors)
    return factors.pair()
