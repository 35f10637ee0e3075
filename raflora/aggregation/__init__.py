"""Aggregation methods for heterogeneous-rank federated LoRA, one module per method.

``aggregate(method, updates, **options)`` validates the updates (refusing malformed ones with a
reason), weights them by ``p_i = num_examples_i / sum`` and dispatches to the method.
"""

from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from raflora.aggregation.fedit import aggregate_fedit
from raflora.aggregation.fedsa import aggregate_fedsa
from raflora.aggregation.ffa import aggregate_ffa
from raflora.aggregation.flexlora import aggregate_flexlora
from raflora.aggregation.flora import aggregate_flora
from raflora.aggregation.florist import aggregate_florist
from raflora.aggregation.hetlora import aggregate_hetlora
from raflora.aggregation.raflora import aggregate_raflora
from raflora.aggregation.replication import aggregate_replication
from raflora.aggregation.result import AggregationResult
from raflora.aggregation.validate import NoValidUpdates, check_updates
from raflora.aggregation.zero_pad import aggregate_zero_pad
from raflora.lora import ClientUpdate


@dataclass(frozen=True)
class Method:
    """A registered aggregation method: its function and which factors a client uploads."""

    name: str
    run: Callable[..., AggregationResult]
    uploads: str  # "AB", "A" or "B"

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(p for p in inspect.signature(self.run).parameters if p not in ("checked", "seed"))

    def upload_values(self, m: int, n: int, rank: int) -> int:
        """Values a client of ``rank`` uploads for one ``m x n`` module."""
        return rank * ((m if "B" in self.uploads else 0) + (n if "A" in self.uploads else 0))


AGGREGATORS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("fedit", aggregate_fedit, "AB"),
        Method("zero_pad", aggregate_zero_pad, "AB"),
        Method("hetlora", aggregate_hetlora, "AB"),
        Method("replication", aggregate_replication, "AB"),
        Method("ffa", aggregate_ffa, "B"),
        Method("fedsa", aggregate_fedsa, "A"),
        Method("flora", aggregate_flora, "AB"),
        Method("flexlora", aggregate_flexlora, "AB"),
        Method("florist", aggregate_florist, "AB"),
        Method("raflora", aggregate_raflora, "AB"),
    )
}


def aggregate(
    method: str,
    updates: Sequence[ClientUpdate],
    *,
    modules: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
    workers: int | None = None,
    **options,
) -> AggregationResult:
    """Aggregate one round of client updates with ``method`` (a key of ``AGGREGATORS``).

    ``modules``/``shapes``: the modules every update must cover and their ``(m, n)`` (default:
    the most common among the updates). ``seed``: for fresh and padded ``A`` inits (and FFA's
    frozen ``A``). ``workers``: compute every module's spectrum (and the singular vectors clients
    get) before returning, that many modules at a time (:meth:`AggregationResult.precompute`);
    ``None`` (default): each module on first use, in the calling thread. Other keyword options
    are the method's own (``tau`` for florist, ``rank_levels`` for raflora,
    ``sfed_alpha``/``num_clients`` for fedsa).
    Malformed updates land in ``result.rejected``; raises ``NoValidUpdates`` when none is left.
    """
    if method not in AGGREGATORS:
        raise ValueError(f"unknown aggregation method {method!r}; choose one of {', '.join(AGGREGATORS)}")
    spec = AGGREGATORS[method]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise TypeError(f"{method}: unknown option(s) {', '.join(unknown)}; its options: {allowed}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    checked = check_updates(updates, modules, shapes)
    result = spec.run(checked, seed=seed, **options)
    return result if workers is None else result.precompute(workers)


__all__ = ["AGGREGATORS", "AggregationResult", "Method", "NoValidUpdates", "aggregate"]
