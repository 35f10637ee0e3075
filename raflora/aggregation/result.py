"""What ``aggregate`` returns: the round's global update per module, in factored form.

Every result keeps, per module, a :class:`~raflora.lora.LowRank` (``.A``, ``.B``) with ``delta = B @ A`` (client
scales already folded in), so ``delta`` is never formed unless asked for and singular values come
from :func:`raflora.lora.product_svd`. Subclasses differ in what a client starts from next round
(:meth:`AggregationResult.client_factors`); each method names its own
(:attr:`raflora.aggregation.method.Method.result_type`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from raflora.aggregation.numerics import (
    stable_dense_top_svd,
    stable_singular_values,
    stable_svd,
    stable_svdvals,
    stable_top_svd,
)
from raflora.aggregation.stacking import DenseUpdate
from raflora.aggregation.validate import Checked, Rejection
from raflora.aggregation.workers import for_each_module
from raflora.lora import (
    LoRAFactors,
    LowRank,
    fresh_factors,
    numerical_rank,
    pad_factors,
)

if TYPE_CHECKING:
    from raflora.aggregation.method import Method


class AggregationResult:
    """The global update of one round.

    Attributes: ``method`` (the :class:`~raflora.aggregation.method.Method` that made it, with its
    options), ``modules``, ``rejected`` (``(client_id, module or None, reason)`` for refused
    updates), ``weights`` (``client_id -> p_i``).
    """

    def __init__(self, method: Method, checked: Checked, factors: Mapping[str, LowRank], seed: int = 0):
        self.method = method
        self.modules: tuple[str, ...] = checked.modules
        self.rejected: list[Rejection] = list(checked.rejected)
        self.weights: dict[Hashable, float] = {u.client_id: p for u, p in zip(checked.updates, checked.weights)}
        self.shapes = {m: checked.shapes[m] for m in self.modules}
        self.seed = seed
        self._factors = factors
        self._ranks = {m: {u.client_id: u.factors[m].rank for u in checked.updates} for m in self.modules}
        self._scales = {m: {u.client_id: u.factors[m].scale for u in checked.updates} for m in self.modules}
        self._svd: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self._sv: dict[str, Tensor] = {}
        self._top: dict[str, tuple[int, Tensor, Tensor, Tensor]] = {}  # module -> (directions asked, Bt, S, At)

    def __repr__(self) -> str:
        kept = ", ".join(f"{c!r}: {p:.3f}" for c, p in self.weights.items())
        return (
            f"<{type(self).__name__} of {self.method!r}: {len(self.modules)} modules, "
            f"weights {{{kept}}}, {len(self.rejected)} rejected>"
        )

    # -- the global update -------------------------------------------------------------------
    def _module(self, module: str) -> str:
        if module not in self._factors:
            raise KeyError(f"module {module!r} is not in this result; modules: {', '.join(self.modules)}")
        return module

    def delta_factors(self, module: str) -> LowRank:
        """``LowRank(A=A, B=B)`` with ``delta = B @ A``; ``A`` is ``(k, n)``, ``B`` is ``(m, k)``."""
        return self._factors[self._module(module)]

    def delta(self, module: str) -> Tensor:
        """Dense ``(m, n)`` global update of this round (for checks and diagnostics only)."""
        return self.delta_factors(module).dense()

    def svd(self, module: str) -> tuple[Tensor, Tensor, Tensor]:
        """Thin SVD ``U, S, V`` of ``delta`` computed from the factors (cached)."""
        if module not in self._svd:
            factors = self.delta_factors(module)
            self._svd[module] = stable_svd(factors.B, factors.A)
        return self._svd[module]

    def singular_values(self, module: str) -> Tensor:
        """Descending singular values of ``delta(module)``: the ``min(m, n, k)`` largest; the rest are 0.

        Computed without the singular vectors (the diagnostics need only these) unless the
        full SVD is already cached.
        """
        if module in self._svd:
            return self._svd[module][1]
        if module not in self._sv:
            factors = self.delta_factors(module)
            if isinstance(factors, DenseUpdate):
                self._sv[module] = stable_svdvals(factors.matrix)
            else:
                self._sv[module] = stable_singular_values(factors.B, factors.A)
        return self._sv[module]

    def precompute(self, workers: int = 1) -> AggregationResult:
        """Compute every module's spectrum now (for the SVD methods also the singular vectors that
        :meth:`client_factors` hands out), ``workers`` modules at a time on one intra-op thread
        each (:func:`raflora.aggregation.workers.for_each_module`); later calls read the cache.
        Returns ``self``.
        """
        for_each_module(self.singular_values, self.modules, workers)
        return self

    def client_ranks(self, module: str) -> dict[Hashable, int]:
        """Rank of each accepted client's update for ``module``."""
        return dict(self._ranks[self._module(module)])

    # -- what clients receive ----------------------------------------------------------------
    def resolve_scale(self, module: str, rank: int, scale: float | None) -> float:
        """The given scale, else the one the round's clients of that rank used."""
        if scale is not None:
            return float(scale)
        used = {self._scales[module][cid] for cid, r in self._ranks[self._module(module)].items() if r == rank}
        if len(used) == 1:
            return used.pop()
        found = "no client of that rank" if not used else f"clients used {sorted(used)}"
        raise ValueError(f"client_factors: module {module!r}: pass scale= for rank {rank} ({found} in this round)")

    def client_factors(self, module: str, rank: int, scale: float | None = None) -> LoRAFactors:
        """The factors a client of ``rank`` starts from next round, with its ``scale`` divided out
        (``scale`` defaults to the one this round's clients of that rank used)."""
        if rank < 1:
            raise ValueError(f"client_factors: rank must be >= 1, got {rank}")
        return self._hand_back(self._module(module), int(rank), self.resolve_scale(module, rank, scale))

    def _hand_back(self, module: str, rank: int, scale: float) -> LoRAFactors:
        raise NotImplementedError

    def download_values(self, module: str, rank: int) -> int:
        """Number of values a client of ``rank`` receives for ``module`` (default ``rank (m + n)``)."""
        m, n = self.shapes[self._module(module)]
        return rank * (m + n)


class TruncationResult(AggregationResult):
    """Factor-averaging methods (fedit, zero_pad, hetlora, replication, ffa).

    The global state is one averaged pair ``(B, A)`` at the largest rank; a client of rank ``r``
    gets its first ``r`` components: ``A[:r]`` and ``B[:, :r] / scale``.
    """

    def _hand_back(self, module, rank, scale):
        padded = pad_factors(module, self._factors[module], rank, self.seed)
        # Divide the client's own columns only: (B / scale)[:, :r] would keep a whole m x r_max
        # copy alive behind every client's factors (2.42x the uploads kept, issue 13).
        return LoRAFactors(A=padded.A, B=padded.B / scale, scale=scale)


class FrozenAResult(TruncationResult):
    """FFA-LoRA: ``A`` is the shared seeded init and never travels; only ``B`` is sent."""

    def download_values(self, module, rank):
        return rank * self.shapes[self._module(module)][0]


class SVDResult(AggregationResult):
    """SVD re-allocation (flexlora, raflora): a client of rank ``r`` gets the best rank-``r``
    approximation of ``delta``, ``U_r S_r V_r^T``.

    Split of the singular values: balanced, ``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``,
    so ``s B A = U_r S_r V_r^T`` and ``B`` and ``A`` have equal norms (the official FlexLoRA code
    puts all of ``S`` in ``B``; the product, which is what training starts from, is the same).
    Directions beyond the (numerical) rank of ``delta`` are padded with ``B = 0`` and a seeded ``A``.
    """

    def _balanced(self, module: str, rank: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(Bt, S, At)``: every singular value ``S`` of ``delta`` and the balanced factors of its
        best rank-``t`` approximation, ``Bt = U_t sqrt(S_t)`` and ``At = sqrt(S_t) V_t^T`` (cached).

        ``t`` covers as many directions as this round's largest rank (or ``rank`` when larger: a
        client never uses more, and rotating back all ``sum r_i`` costs time and memory), less
        those that are numerically zero (matrix_rank's tolerance: a zero singular value would give
        a zero ``A`` row with a zero ``B`` column, a component that never trains again; those are
        padded instead, ``B = 0`` and a seeded ``A``, e.g. after an all-zero round).
        """
        got = self._top.get(module)
        # Enough directions cached, or fewer non-zero ones than were asked for (none to add).
        if got is not None and (got[0] >= rank or got[1].shape[1] < got[0]):
            return got[1:]
        need = max(rank, max(self._ranks[module].values()))
        m, n = self.shapes[module]
        if module in self._svd:
            U, S, V = self._svd[module]
            t = min(need, numerical_rank(S, m, n))
            BAV, V = U[:, :t] * S[:t], V[:, :t].T.contiguous().T  # a copy: the cached V stays
        else:
            factors = self.delta_factors(module)
            if isinstance(factors, DenseUpdate):
                BAV, S, V = stable_dense_top_svd(factors.matrix, need)
            else:
                BAV, S, V = stable_top_svd(factors.B, factors.A, top=need)
            t = BAV.shape[1]
        root = S[:t].sqrt()
        # In place: BAV and V are this call's own tensors (no second copy of them, issue 13).
        # V.T is row-major (product_top_svd), so At = root V^T is row-major too.
        balanced = (BAV.div_(root), S, V.T.mul_(root[:, None]))
        self._top[module] = (need, *balanced)
        return balanced

    def singular_values(self, module: str) -> Tensor:
        # Clients are handed the top singular vectors next: compute them with the values, once.
        return self._balanced(self._module(module), 1)[1]

    def _hand_back(self, module, rank, scale):
        Bt, _, At = self._balanced(module, rank)
        k = min(rank, Bt.shape[1])
        # s B A = Bt At = U_k S_k V_k^T: each factor takes sqrt(S_k / s), so B and A have equal norms.
        root = 1.0 / math.sqrt(scale)
        padded = pad_factors(module, LowRank(A=At[:k] * root, B=Bt[:, :k] * root), rank, self.seed)
        return LoRAFactors(A=padded.A.contiguous(), B=padded.B.contiguous(), scale=scale)


class MergeResult(AggregationResult):
    """Methods whose clients merge ``delta`` into the frozen weight and start a fresh adapter
    (flora, florist): :meth:`client_factors` is a new ``B = 0``, seeded-``A`` init."""

    def _hand_back(self, module, rank, scale):
        m, n = self.shapes[module]
        factors = self._factors[module]
        fresh = fresh_factors(module, m, n, rank, scale, self.seed, factors.dtype)
        # fresh_factors draws on the CPU; hand back on the device the round ran on.
        return LoRAFactors(A=fresh.A.to(factors.device), B=fresh.B.to(factors.device), scale=scale)

    def global_rank(self, module: str) -> int:
        """Rank of the broadcast global adapter (``sum r_i`` for flora, ``p`` for florist)."""
        return self.delta_factors(module).rank

    def download_values(self, module, rank):
        m, n = self.shapes[self._module(module)]
        return self.global_rank(module) * (m + n)


class SharedAResult(AggregationResult):
    """FedSA-LoRA: only the averaged ``A`` is global; every client keeps its own ``B``.

    The server never holds a client's ``B``, so there is no global ``delta``: ``delta_factors``
    raises, and the spectrum (:meth:`singular_values`) is the shared ``A``'s. A client of rank
    ``r`` receives ``A[:r]`` (``B = 0`` in what it receives; it puts its own ``B`` back,
    :meth:`raflora.aggregation.method.Method.client_start`). Only ``A`` is sent.
    """

    def delta_factors(self, module):
        raise ValueError(
            f"{self.method.name}: module {self._module(module)!r}: each client keeps its own B, so the "
            "server has no global update; shared_a(module) is the global part"
        )

    def shared_a(self, module: str) -> Tensor:
        """The averaged ``A`` (``r_max x n``), the only global part."""
        return self._factors[self._module(module)].A

    def singular_values(self, module: str) -> Tensor:
        if module not in self._sv:
            self._sv[module] = stable_svdvals(self.shared_a(module))
        return self._sv[module]

    def _hand_back(self, module, rank, scale):
        A = self._factors[module].A
        m = self.shapes[module][0]
        zero_b = torch.zeros((m, A.shape[0]), dtype=A.dtype, device=A.device)
        padded = pad_factors(module, LowRank(A=A, B=zero_b), rank, self.seed)
        return LoRAFactors(A=padded.A, B=padded.B, scale=scale)

    def download_values(self, module, rank):
        return rank * self.shapes[self._module(module)][1]
