"""LoRA factor algebra shared by every aggregation method.

A client's update of one adapted matrix ``W`` (``m x n``) is ``LoRAFactors(A, B, scale)`` with
``A: (r, n)``, ``B: (m, r)``; its contribution to the weight is ``scale * B @ A``.

Nothing here forms a dense ``m x n`` matrix except :meth:`LoRAFactors.delta`, which exists for
checks. Singular values of a product ``B @ A`` come from :func:`product_svd`: QR of ``B`` and of
``A^T`` and an SVD of the small ``k x k`` core, ``O((m + n) k^2 + k^3)``;
:func:`product_top_svd` is the same without forming either ``Q``, for rank-``r`` truncations.

This module imports torch only, so it can be lifted into any federated stack.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SCALINGS = ("lora", "rslora", "sfed")


@dataclass(frozen=True)
class LoRAFactors:
    """One adapted matrix's low-rank update: ``delta = scale * B @ A``.

    ``A`` has shape ``(rank, n)`` (PEFT's ``lora_A.weight``), ``B`` has shape ``(m, rank)``
    (PEFT's ``lora_B.weight``). Nothing is checked at construction: :func:`raflora.aggregate`
    refuses malformed factors with a reason instead of crashing.
    """

    A: Tensor
    B: Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)`` of the adapted matrix."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self) -> Tensor:
        """The dense ``(m, n)`` update ``scale * B @ A`` (for checks and small models only)."""
        return self.scale * (self.B @ self.A)

    def num_values(self) -> int:
        """Number of values on the wire for this pair: ``rank * (m + n)``."""
        return int(self.A.numel() + self.B.numel())


class LowRank:
    """A low-rank matrix by its named factors: ``B @ A``, ``A`` is ``(k, n)``, ``B`` is ``(m, k)``.

    The global update of a module travels as this pair (any scale already folded in). Like
    :class:`LoRAFactors` it takes ``A`` then ``B``, by keyword only (``LowRank(A=..., B=...)``), and
    is read by name (``.A``, ``.B``), never unpacked: the two factors are never told apart by
    position or shape. Subclasses that form their factors when read
    (:class:`~raflora.aggregation.stacking.Stack`) override the properties.
    """

    __slots__ = ("_A", "_B")

    def __init__(self, *, A: Tensor, B: Tensor):
        self._A = A
        self._B = B

    @property
    def A(self) -> Tensor:
        return self._A

    @property
    def B(self) -> Tensor:
        return self._B

    def __repr__(self) -> str:
        return f"{type(self).__name__}(A={tuple(self.A.shape)}, B={tuple(self.B.shape)}, dtype={self.dtype})"

    def dense(self) -> Tensor:
        """``B @ A`` as an ``(m, n)`` matrix (for checks and small models only)."""
        return self.B @ self.A

    def clone(self) -> LowRank:
        """A plain pair holding detached copies of the factors (a subclass's formed once)."""
        return LowRank(A=self.A.detach().clone(), B=self.B.detach().clone())

    @property
    def rank(self) -> int:
        """``k``, the number of components."""
        return int(self.A.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device


@dataclass(frozen=True)
class ClientUpdate:
    """What one client uploads after a round: factors per module name and its example count."""

    client_id: Hashable
    factors: Mapping[str, LoRAFactors]
    num_examples: int


def lora_scale(scaling: str, alpha: float, rank: int, num_clients: int | None = None) -> float:
    """The scale ``s`` in ``delta = s * B @ A``.

    - ``"lora"``: ``alpha / r`` (Hu et al.; PEFT's default)
    - ``"rslora"``: ``alpha / sqrt(r)`` (rank-stabilised LoRA; PEFT's ``use_rslora``)
    - ``"sfed"``: ``alpha * sqrt(N / r)`` with ``N`` the number of clients aggregated per round
      (SFed-LoRA, arXiv 2603.08058)
    """
    if rank < 1:
        raise ValueError(f"lora_scale: rank must be >= 1, got {rank}")
    if scaling == "lora":
        return alpha / rank
    if scaling == "rslora":
        return alpha / math.sqrt(rank)
    if scaling == "sfed":
        if not num_clients or num_clients < 1:
            raise ValueError("lora_scale: 'sfed' scaling needs num_clients >= 1")
        return alpha * math.sqrt(num_clients / rank)
    raise ValueError(f"lora_scale: unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")


def product_svd(B: Tensor, A: Tensor, top: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``U, S, V`` of ``B @ A`` without forming it: ``B @ A = U @ diag(S) @ V.T``.

    ``B = Qb Rb`` and ``A.T = Qa Ra`` (reduced QR), so ``B @ A = Qb (Rb Ra^T) Qa^T``; the SVD of
    the small core ``Rb Ra^T = Uc S Vc^T`` gives ``U = Qb Uc`` and ``V = Qa Vc``.
    ``S`` is descending; ``U`` is ``(m, s)``, ``V`` is ``(n, s)`` with ``s = min(m, n, k)``.
    ``top``: rotate back only the first ``top`` singular vectors (``U`` and ``V`` get
    ``min(top, s)`` columns, ``S`` stays whole), for callers that hand out rank-``r`` truncations.
    """
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    if top is not None:
        Uc, Vch = Uc[:, :top], Vch[:top]
    return Qb @ Uc, S, Qa @ Vch.T


def numerical_rank(S: Tensor, m: int, n: int) -> int:
    """How many of the descending singular values ``S`` of an ``m x n`` matrix are not numerically
    zero (``matrix_rank``'s default tolerance, ``S_1 max(m, n) eps``)."""
    if not S.numel():
        return 0
    floor = float(S[0]) * max(m, n) * torch.finfo(S.dtype).eps
    return int((S > floor).sum())


def product_top_svd(B: Tensor, A: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """The leading part of the SVD of ``B @ A`` that a rank-``top`` truncation uses: ``(BAV, S, V)``.

    ``S`` is whole (as in :func:`product_svd`); ``V`` holds the first ``t`` right singular
    vectors (``n x t``), ``t = min(top, numerical_rank(S))``, and ``BAV = B @ A @ V = U_t diag(S_t)``
    (``m x t``), so ``BAV @ V.T`` is the best rank-``t`` approximation of ``B @ A``. Directions
    whose singular value is numerically zero are left out: they have no well-defined vectors.

    Same ``R`` factors and core ``Rb Ra^T = Uc S Vc^T`` as :func:`product_svd`, but neither ``Q``
    is formed: with ``B = Qb Rb`` and ``A^T = Qa Ra``, ``A @ Qa = Ra^T`` and ``B^T @ Qb = Rb^T``, so

        U_t S_t = B A (Qa Vc_t) = B (Ra^T Vc_t),    V_t S_t = A^T B^T (Qb Uc_t) = A^T (Rb^T Uc_t)

    are two thin products (GEMMs). Each vector is exact up to rounding of order
    ``eps ||B|| ||A|| / S_j`` (as ``U`` always was), so ``U_t S_t V_t^T`` is accurate to
    ``eps ||B|| ||A||`` absolute, like the stacking itself; about half the work of
    :func:`product_svd` for the ``4096 x 160`` stacks of a LLaMA-7B round.
    """
    Rb = torch.linalg.qr(B, mode="r")[1]
    Ra = torch.linalg.qr(A.T, mode="r")[1]
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    t = min(top, numerical_rank(S, B.shape[0], A.shape[1]))
    BAV = B @ (Ra.T @ Vch[:t].T)
    # V^T = (Uc_t^T Rb) A / S_t, computed row-major (t x n) so the A handed to clients needs no copy.
    Vt = ((Uc[:, :t].T @ Rb) @ A).div_(S[:t, None])
    return BAV, S, Vt.T


def product_singular_values(B: Tensor, A: Tensor) -> Tensor:
    """The ``S`` of :func:`product_svd` alone: the same QR ``R`` factors and core, but neither
    ``Q`` nor the singular vectors are formed (about half the work when only ``S`` is needed)."""
    Rb = torch.linalg.qr(B, mode="r")[1]
    Ra = torch.linalg.qr(A.T, mode="r")[1]
    return torch.linalg.svdvals(Rb @ Ra.T)


def product_frobenius_norm(B: Tensor, A: Tensor) -> Tensor:
    """``||B @ A||_F`` without the dense product: ``sqrt(sum((B^T B) * (A A^T)))``."""
    value = ((B.T @ B) * (A @ A.T)).sum()
    return value.clamp_min(0).sqrt()


def energy_ratio(singular_values: Tensor | Sequence[float], r: int) -> float:
    """Share of the squared-singular-value energy in the top ``r`` directions.

    ``rho_r = sum_{j<=r} sigma_j^2 / sum_j sigma_j^2``. Rank collapse is ``rho_{r_min} -> 1``.
    Returns ``nan`` for an all-zero update (no energy anywhere).
    """
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    if r < 0:
        raise ValueError(f"energy_ratio: r must be >= 0, got {r}")
    energy = s.square()
    total = float(energy.sum())
    if total == 0.0:
        return float("nan")
    top = torch.sort(energy, descending=True).values[:r]
    return float(top.sum()) / total


def energy_by_partition(singular_values: Tensor | Sequence[float], rank_levels: Sequence[int]) -> dict[str, float]:
    """Energy share of each rank partition ``P_k = (l_{k-1}, l_k]`` of the spectrum.

    Keys name the 1-based direction ranges (``"1-2"``, ``"3-4"``, ...); the last key
    (``"17+"``) holds whatever lies beyond the largest level, so the shares sum to 1.
    """
    levels = sorted(set(int(level) for level in rank_levels))
    if not levels or levels[0] < 1:
        raise ValueError(f"energy_by_partition: rank levels must be >= 1, got {list(rank_levels)}")
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    energy = torch.sort(s.square(), descending=True).values
    total = float(energy.sum())
    shares: dict[str, float] = {}
    low = 0
    for level in levels:
        part = float(energy[low:level].sum())
        shares[f"{low + 1}-{level}"] = part / total if total > 0 else float("nan")
        low = level
    tail = float(energy[low:].sum())
    shares[f"{low + 1}+"] = tail / total if total > 0 else float("nan")
    return shares


def partition_order(key: str) -> tuple[int, float]:
    """Sort key of an :func:`energy_by_partition` key: by first direction, then last (runs with
    different levels meet in one table: ``"1-2"`` before ``"1-16"``; ``"17+"`` ends at infinity)."""
    first, _, last = key.rstrip("+").partition("-")
    return int(first), float(last) if last else float("inf")


def _generator(module: str, seed: int) -> torch.Generator:
    # crc32 of the module name: stable across processes, unlike hash().
    g = torch.Generator(device="cpu")
    g.manual_seed((zlib.crc32(module.encode()) * 1_000_003 + int(seed)) % (2**63 - 1))
    return g


def init_a(module: str, rank: int, n: int, seed: int = 0, dtype=torch.float32) -> Tensor:
    """A seeded LoRA ``A`` init, ``U(-1/sqrt(n), 1/sqrt(n))`` like PEFT's kaiming-uniform(a=sqrt 5).

    Deterministic per ``(module, seed)``, and nested: ``init_a(m, r, n)`` equals the first ``r``
    rows of ``init_a(m, R, n)`` for ``R >= r``. FFA-LoRA's shared frozen ``A`` is this matrix.
    """
    bound = 1.0 / math.sqrt(n)
    rows = torch.rand((rank, n), generator=_generator(module, seed), dtype=torch.float64)
    return ((rows * 2.0 - 1.0) * bound).to(dtype)


def fresh_factors(
    module: str, m: int, n: int, rank: int, scale: float, seed: int = 0, dtype=torch.float32
) -> LoRAFactors:
    """A new adapter: ``B = 0`` and a seeded ``A`` (``delta = 0``, but trainable)."""
    return LoRAFactors(A=init_a(module, rank, n, seed, dtype), B=torch.zeros((m, rank), dtype=dtype), scale=scale)


def pad_factors(module: str, factors: LowRank, rank: int, seed: int = 0) -> LowRank:
    """Truncate or extend ``factors`` to ``rank`` components without changing ``B @ A``.

    Missing components get ``B = 0`` and a seeded ``A`` row, so they start at zero but still
    receive gradients (a zero ``A`` row with a zero ``B`` column would never train).
    """
    A, B = factors.A, factors.B
    have = A.shape[0]
    if rank <= have:
        return LowRank(A=A[:rank], B=B[:, :rank])
    extra_a = init_a(module, rank, A.shape[1], seed, A.dtype).to(A.device)[have:]
    extra_b = torch.zeros((B.shape[0], rank - have), dtype=B.dtype, device=B.device)
    return LowRank(A=torch.cat([A, extra_a], dim=0), B=torch.cat([B, extra_b], dim=1))
