"""Refuse malformed client updates with a reason, keep the rest.

A refused update is dropped whole (a partial update would bias the average) and reported as
``(client_id, module or None, reason)``. The round goes on with the remaining updates.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from raflora.aggregation.numerics import all_finite, log2_norm, log2_product_norm
from raflora.aggregation.workers import for_each_module
from raflora.lora import ClientUpdate, LoRAFactors

Rejection = tuple[Hashable, "str | None", str]
Refusals = dict[int, tuple["str | None", str]]  # update index -> (module, reason)


class NoValidUpdates(ValueError):
    """Raised when nothing is left to aggregate."""


@dataclass(frozen=True)
class Checked:
    """Updates that passed, cast to one dtype and device, with their FedAvg weights (never changed
    in place: :meth:`without` returns a new one)."""

    updates: tuple[ClientUpdate, ...]
    modules: tuple[str, ...]
    shapes: dict[str, tuple[int, int]]
    rejected: tuple[Rejection, ...]
    dtype: torch.dtype
    device: torch.device
    max_weight: float = 1.0  # the largest share one update may have (capped_shares); 1: no cap

    @property
    def weights(self) -> list[float]:
        """``p_i = num_examples_i / sum of num_examples`` over the accepted updates, each share
        capped at ``max_weight`` (:func:`capped_shares`)."""
        return capped_shares([u.num_examples for u in self.updates], self.max_weight)

    def ranks(self, module: str) -> list[int]:
        return [u.factors[module].rank for u in self.updates]

    def without(self, index_reasons: Refusals) -> Checked:
        """These updates less the ones at the given indices (method-specific checks), each recorded
        with its reason; ``NoValidUpdates`` when none is left."""
        rejected = self.rejected + tuple(
            (self.updates[i].client_id, module, reason) for i, (module, reason) in sorted(index_reasons.items())
        )
        updates = tuple(u for i, u in enumerate(self.updates) if i not in index_reasons)
        if not updates:
            raise NoValidUpdates(_nothing_left(rejected))
        return replace(self, updates=updates, rejected=rejected)

    def cast(self, dtype: torch.dtype) -> Checked:
        """The same round with every factor in ``dtype`` (the float64 retry of a failed combine)."""
        return replace(
            self,
            dtype=dtype,
            updates=tuple(
                ClientUpdate(
                    u.client_id,
                    {m: LoRAFactors(A=f.A.to(dtype), B=f.B.to(dtype), scale=f.scale) for m, f in u.factors.items()},
                    u.num_examples,
                )
                for u in self.updates
            ),
        )


def update_log2_norms(checked: Checked, module: str, uploads: str) -> list[float]:
    """``log2`` of each accepted update's norm for ``module``: ``||s B A||_F`` from the factors when
    clients upload both, else the uploaded factor's (``||s B||_F`` or ``||A||_F``)."""
    out = []
    for u in checked.updates:
        f = u.factors[module]
        if uploads == "AB":
            out.append(log2_product_norm(f.B, f.A, f.scale))
        elif uploads == "B":
            out.append(log2_norm(f.B) + math.log2(f.scale))
        else:
            out.append(log2_norm(f.A))
    return out


def check_ratio(max_norm_ratio) -> float:
    """``max_norm_ratio`` as a float; ValueError unless it is 0 (off) or a finite number >= 1."""
    ratio = float(max_norm_ratio) if isinstance(max_norm_ratio, numbers.Real) else math.nan
    if isinstance(max_norm_ratio, bool) or not (ratio == 0 or 1 <= ratio < math.inf):
        raise ValueError(f"max_norm_ratio must be 0 (off) or a finite number >= 1, got {max_norm_ratio!r}")
    return ratio


def lower_median(values: Sequence[float]) -> float:
    """The ``ceil(n/2)``-th smallest value: an honest majority fixes it however large the rest are."""
    return sorted(values)[(len(values) - 1) // 2]


def power_text(log2_value: float) -> str:
    """``2**log2_value`` to 3 digits, written as a power of ten when it is too large for a float."""
    return f"{2.0**log2_value:.3g}" if log2_value < 1000 else f"1e{log2_value * math.log10(2):.0f}"


def norm_outliers(checked: Checked, uploads: str, max_norm_ratio: float, workers: int | None = None) -> Refusals:
    """Updates whose norm in some module exceeds ``max_norm_ratio`` times the round's median norm
    there, by index, with the module and the ratio in the reason.

    The median is the lower median (the ``ceil(n/2)``-th smallest norm), so an honest majority fixes
    it however large the other norms are. With fewer than 3 updates there is no majority to tell
    which one is off, and with a zero median nothing to compare with: no update is refused then.
    ``max_norm_ratio = 0`` turns the bound off. ``workers``: the norms of that many modules at once
    (:func:`~raflora.aggregation.workers.for_each_module`; the same answer for any number).
    """
    if not max_norm_ratio or len(checked.updates) < 3:
        return {}
    limit = math.log2(max_norm_ratio)
    by_module: dict[str, list[float]] = {}
    for_each_module(
        lambda m: by_module.__setitem__(m, update_log2_norms(checked, m, uploads)), checked.modules, workers or 1
    )
    refused: Refusals = {}
    for module in checked.modules:
        norms = by_module[module]
        median = lower_median(norms)
        if median == -math.inf:
            continue
        for i, (u, norm) in enumerate(zip(checked.updates, norms)):
            if i not in refused and norm - median > limit:
                refused[i] = (
                    module,
                    f"client {u.client_id!r}: module {module!r}: update norm {power_text(norm)} is "
                    f"{power_text(norm - median)} times the round's median {power_text(median)} "
                    f"(max_norm_ratio {max_norm_ratio:g})",
                )
    return refused


def check_max_weight(max_weight) -> float:
    """``max_weight`` as a float; ValueError unless it is a number in (0, 1]."""
    value = float(max_weight) if isinstance(max_weight, numbers.Real) else math.nan
    if isinstance(max_weight, bool) or not 0 < value <= 1:
        raise ValueError(f"max_weight must be a number in (0, 1], got {max_weight!r}")
    return value


def capped_shares(counts: Sequence[int], max_weight: float = 1.0) -> list[float]:
    """Each count's share of the total, no share above ``max_weight`` (water-filling).

    ``p_i = n_i / sum n`` when no share is over the cap (the same floats, so a round the cap does
    not reach has FedAvg's weights bit for bit). Otherwise the shares over the cap are set to it and
    what they lose goes to the others in proportion to their counts, again until none is over:
    ``p_i = max_weight`` for the capped set C, ``p_i = (1 - |C| max_weight) n_i / sum_{j not in C} n_j``
    for the rest. When the k counts cannot all fit under the cap (``k * max_weight <= 1``) every
    share is ``1 / k``: no update outweighs another.
    """
    total = float(sum(counts))
    shares = [n / total for n in counts]
    if max(shares) <= max_weight:
        return shares
    k = len(counts)
    if k * max_weight <= 1:
        return [1.0 / k] * k
    capped: set[int] = set()
    while True:
        rest = float(sum(n for i, n in enumerate(counts) if i not in capped))
        free = 1.0 - len(capped) * max_weight
        shares = [max_weight if i in capped else free * n / rest for i, n in enumerate(counts)]
        over = {i for i, p in enumerate(shares) if i not in capped and p > max_weight}
        if not over:
            return shares
        capped |= over


MAX_EXAMPLES = 10**12  # far above any client's data; with it every weight sum is exact in float64


def count_problem(n) -> str | None:
    """Why ``n`` is not a usable example count (a finite positive integer below 10**12), else None.

    ``numbers.Real``, not ``(int, float)``: counts often arrive as numpy integers (np.bincount, the
    length of an index array). An integral float (``7.0``, from JSON) counts as that integer.
    Huge Python ints are compared as ints: ``float(10**400)`` overflows.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Real):
        return f"a {type(n).__name__}"
    if isinstance(n, numbers.Integral):
        n = int(n)
        if n.bit_length() > 64:  # repr of a 5,000-digit int raises; say how big it is instead
            return f"an integer of about {int(n.bit_length() * math.log10(2)) + 1} digits"
        return None if 0 < n < MAX_EXAMPLES else repr(n)
    try:
        value = float(n)
    except (OverflowError, ValueError):
        return f"{type(n).__name__} that is no float"
    if not math.isfinite(value) or value <= 0 or value >= MAX_EXAMPLES or not value.is_integer():
        return repr(n)
    return None


def _nothing_left(rejected: Sequence[Rejection]) -> str:
    lines = "; ".join(reason for _, _, reason in rejected)
    return f"no valid client update to aggregate ({len(rejected)} refused: {lines})"


def _most_common(items: Iterable):
    counts = Counter(items)
    # Ties go to the first seen: Counter keeps insertion order and most_common is stable.
    return counts.most_common(1)[0][0]


def _check_factors(cid, module: str, f, shape: tuple[int, int] | None) -> str | None:
    where = f"client {cid!r}: module {module!r}"
    if not isinstance(f, LoRAFactors):
        return f"{where}: expected LoRAFactors, got {type(f).__name__}"
    A, B = f.A, f.B
    if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor):
        return f"{where}: A and B must be torch tensors"
    if A.dim() != 2 or B.dim() != 2:
        return f"{where}: A and B must be 2-D, got A {tuple(A.shape)} and B {tuple(B.shape)}"
    if not (A.is_floating_point() and B.is_floating_point()):
        return f"{where}: A and B must be floating point, got {A.dtype} and {B.dtype}"
    if A.shape[0] < 1:
        return f"{where}: rank must be >= 1, got A {tuple(A.shape)}"
    if A.shape[0] != B.shape[1]:
        return f"{where}: rank mismatch: A has {A.shape[0]} rows but B has {B.shape[1]} columns"
    if shape is not None and (B.shape[0], A.shape[1]) != shape:
        return (
            f"{where}: wrong shape: B {tuple(B.shape)} and A {tuple(A.shape)} make a "
            f"{B.shape[0]}x{A.shape[1]} update, the module is {shape[0]}x{shape[1]}"
        )
    if not (all_finite(A) and all_finite(B)):
        return f"{where}: factors contain NaN or Inf"
    scale = f.scale
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
        return f"{where}: scale must be a finite positive number, got {scale!r}"
    return None


def check_updates(
    updates: Sequence[ClientUpdate],
    modules: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    max_weight: float = 1.0,
) -> Checked:
    """Validate updates; return the accepted ones cast to a common dtype/device.

    ``modules`` is the set every update must cover exactly (default: the most common set among
    the updates). ``shapes`` maps a module to its ``(m, n)`` (default: the most common shape).
    ``max_weight``: the largest share of the round one update may get (:func:`capped_shares`).
    """
    updates = list(updates)
    if not updates:
        raise NoValidUpdates("no client updates given: aggregate needs at least one ClientUpdate")
    rejected: list[Rejection] = []
    seen_ids: set = set()
    candidates: list[ClientUpdate] = []
    for u in updates:
        if not isinstance(u, ClientUpdate):
            rejected.append((None, None, f"expected ClientUpdate, got {type(u).__name__}"))
            continue
        problem = count_problem(u.num_examples)
        if problem:
            rejected.append(
                (
                    u.client_id,
                    None,
                    f"client {u.client_id!r}: num_examples must be a positive integer below 10**12, got {problem}",
                )
            )
            continue
        cid = u.client_id
        if not ((isinstance(cid, str) and cid.strip()) or (isinstance(cid, int) and not isinstance(cid, bool))):
            # The id keys result.weights: NaN (never equal to itself) would pass the duplicate check.
            rejected.append((None, None, f"client {cid!r}: client_id must be a non-empty string or an integer"))
            continue
        if u.client_id in seen_ids:
            rejected.append((u.client_id, None, f"client {u.client_id!r}: duplicate client id in this round"))
            continue
        if not isinstance(u.factors, Mapping) or not u.factors:
            rejected.append((u.client_id, None, f"client {u.client_id!r}: no factors"))
            continue
        seen_ids.add(u.client_id)
        candidates.append(u)
    if not candidates:
        raise NoValidUpdates(_nothing_left(rejected))

    expected = (
        tuple(modules) if modules is not None else tuple(_most_common(tuple(sorted(u.factors)) for u in candidates))
    )
    shapes = dict(shapes or {})
    for module in expected:
        if module not in shapes:
            seen = [
                (f.B.shape[0], f.A.shape[1])
                for u in candidates
                if isinstance(f := u.factors.get(module), LoRAFactors)
                and isinstance(f.A, torch.Tensor)
                and isinstance(f.B, torch.Tensor)
                and f.A.dim() == 2
                and f.B.dim() == 2
            ]
            if seen:
                rows, cols = _most_common(seen)
                shapes[module] = (int(rows), int(cols))

    accepted: list[ClientUpdate] = []
    for u in candidates:
        reason = None
        module_at = None
        missing = [m for m in expected if m not in u.factors]
        unknown = [m for m in u.factors if m not in expected]
        if missing:
            module_at, reason = missing[0], f"client {u.client_id!r}: module {missing[0]!r} is missing"
        elif unknown:
            module_at, reason = unknown[0], f"client {u.client_id!r}: module {unknown[0]!r} is unknown"
        else:
            for module in expected:
                reason = _check_factors(u.client_id, module, u.factors[module], shapes.get(module))
                if reason:
                    module_at = module
                    break
        if reason:
            rejected.append((u.client_id, module_at, reason))
        else:
            accepted.append(u)
    if not accepted:
        raise NoValidUpdates(_nothing_left(rejected))

    dtypes = {f.A.dtype for u in accepted for f in u.factors.values()} | {
        f.B.dtype for u in accepted for f in u.factors.values()
    }
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    device = next(iter(accepted[0].factors.values())).A.device
    cast = tuple(
        ClientUpdate(
            u.client_id,
            {
                m: LoRAFactors(
                    A=f.A.to(device=device, dtype=dtype), B=f.B.to(device=device, dtype=dtype), scale=float(f.scale)
                )
                for m, f in u.factors.items()
            },
            int(u.num_examples),
        )
        for u in accepted
    )
    return Checked(cast, expected, shapes, tuple(rejected), dtype, device, check_max_weight(max_weight))
