"""The SVD methods' server path before issue 4's fix, kept to time it next to the current one.

``"raflora:explicit-q"`` (any SVD method plus :data:`EXPLICIT_Q`) in
:func:`benchmarks.common.server_round` runs it. The updates go through today's checks and
stacking, then, as before the fix:

- every factor is also checked with ``torch.isfinite(t).all()`` (three elementwise passes and a
  bool tensor; today one ``aminmax`` pass, ~0.3 ms a LLaMA-7B module, is run as well, so this
  path is overstated by well under 1%);
- each module's top singular vectors come from ``product_svd(B, A, top=r_max)``: both ``Q``
  formed by ``torch.linalg.qr`` and the core's vectors rotated back by two products;
- a client of rank ``r`` gets ``U_r sqrt(S_r / s)`` and ``sqrt(S_r / s) V_r^T``.

The factors handed back are the same up to rounding
(``tests/benchmarks/test_benchmarks_smoke.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from raflora import AGGREGATORS, ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation.numerics import stable_top_svd
from raflora.aggregation.result import SVDResult
from raflora.aggregation.stacking import Stack
from raflora.aggregation.validate import check_updates
from raflora.lora import LowRank, numerical_rank, pad_factors, product_svd

EXPLICIT_Q = ":explicit-q"
STACKED_COPY = ":stacked-copy"


class ExplicitQResult(SVDResult):
    """:class:`SVDResult` with the hand-back it had before the fix."""

    def _top_svd(self, module: str, rank: int) -> tuple[Tensor, Tensor, Tensor]:
        if module in self._svd:
            return self._svd[module]
        got = self._top.get(module)
        if got is None or got[0].shape[1] < min(rank, got[1].shape[0]):
            need = max(rank, max(self._ranks[module].values()))
            factors = self.delta_factors(module)
            got = product_svd(factors.B, factors.A, top=need)
            self._top[module] = got
        return got

    def singular_values(self, module: str) -> Tensor:
        return self._top_svd(self._module(module), 1)[1]

    def _hand_back(self, module, rank, scale):
        U, S, V = self._top_svd(module, rank)
        m, n = self.shapes[module]
        k = min(rank, numerical_rank(S, m, n))
        root = (S[:k] / scale).sqrt()
        padded = pad_factors(module, LowRank(A=root[:, None] * V[:, :k].T, B=U[:, :k] * root), rank, self.seed)
        return LoRAFactors(A=padded.A.contiguous(), B=padded.B.contiguous(), scale=scale)


def aggregate_explicit_q(method: str, updates: Sequence[ClientUpdate], **options) -> ExplicitQResult:
    """``aggregate(method, updates, **options)`` for ``flexlora`` or ``raflora``, the way it ran
    before the fix (lazy: each module is factorized when first used)."""
    checked = check_updates(updates)
    for u in checked.updates:
        for f in u.factors.values():
            bool(torch.isfinite(f.A).all() and torch.isfinite(f.B).all())
    spec = AGGREGATORS[method](**options)
    result = spec.result_type(spec, checked, spec.combine(checked, 0), 0)
    if not isinstance(result, SVDResult):
        raise ValueError(f"{method}: the explicit-Q baseline exists for the SVD methods (flexlora, raflora) only")
    factors = {m: result.delta_factors(m) for m in result.modules}
    return ExplicitQResult(result.method, checked, factors, result.seed)


class StackedCopyResult(SVDResult):
    """:class:`SVDResult` with the balanced factors scaled out of place, as before issue 13."""

    def _balanced(self, module, rank):
        got = self._top.get(module)
        if got is not None and (got[0] >= rank or got[1].shape[1] < got[0]):
            return got[1:]
        need = max(rank, max(self._ranks[module].values()))
        factors = self.delta_factors(module)
        BAV, S, V = stable_top_svd(factors.B, factors.A, top=need)
        root = S[: BAV.shape[1]].sqrt()
        balanced = (BAV / root, S, root[:, None] * V.T)
        self._top[module] = (need, *balanced)
        return balanced


def aggregate_stacked_copy(
    method: str, updates: Sequence[ClientUpdate], workers: int | None = None, **options
) -> SVDResult:
    """``aggregate`` as before issue 13's memory fix: every module's stacked ``B`` and ``A`` formed
    during the combine and held by the result for the whole round (today a
    :class:`~raflora.aggregation.stacking.Stack` keeps the clients' own factors and forms the stack
    only while a module is factorized), and the balanced factors scaled out of place. The numbers
    are the same, bit for bit."""
    result = aggregate(method, updates, **options)
    if not isinstance(result, SVDResult):
        raise ValueError(f"{method}: the stacked-copy baseline exists for the SVD methods only")
    factors = {m: (f.pair() if isinstance(f, Stack) else f) for m in result.modules for f in (result.delta_factors(m),)}
    checked = check_updates(updates)
    old = StackedCopyResult(result.method, checked, factors, result.seed)
    return old if workers is None else old.precompute(workers)
