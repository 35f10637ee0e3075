"""Aggregation methods for heterogeneous-rank federated LoRA, one class per method in its own module.

``aggregate(method, updates, **options)`` validates the updates (refusing malformed ones with a
reason), weights them by ``p_i = num_examples_i / sum`` and combines them with the method.
A method is a :class:`~raflora.aggregation.method.Method` subclass; :data:`AGGREGATORS` maps each
name to its class, and ``AGGREGATORS[name](**options)`` is the method with those options.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence

from raflora.aggregation.carryover import Carryover
from raflora.aggregation.consensus import Consensus
from raflora.aggregation.fedit import FedIT
from raflora.aggregation.fedsa import FedSALoRA
from raflora.aggregation.ffa import FFALoRA
from raflora.aggregation.flexlora import FlexLoRA
from raflora.aggregation.flora import FLoRA
from raflora.aggregation.florist import FLoRIST
from raflora.aggregation.hetlora import HetLoRA
from raflora.aggregation.lora_fair import LoRAFAIR
from raflora.aggregation.method import MAX_NORM_RATIO, Method
from raflora.aggregation.raflora import RaFLoRA
from raflora.aggregation.rb_lora import RBLoRA
from raflora.aggregation.replication import Replication
from raflora.aggregation.result import AggregationResult
from raflora.aggregation.validate import NoValidUpdates
from raflora.aggregation.zero_pad import ZeroPad
from raflora.lora import ClientUpdate, LowRank

AGGREGATORS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        FedIT,
        ZeroPad,
        HetLoRA,
        Replication,
        FFALoRA,
        FedSALoRA,
        FLoRA,
        FlexLoRA,
        FLoRIST,
        RaFLoRA,
        Carryover,
        Consensus,
        RBLoRA,
        LoRAFAIR,
    )
}


def method_named(name: str, **options) -> Method:
    """``AGGREGATORS[name](**options)``, with one readable error for an unknown name or option
    (``ValueError``, or ``TypeError`` naming the options the method has)."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation method {name!r}; choose one of {', '.join(AGGREGATORS)}")
    cls = AGGREGATORS[name]
    unknown = sorted(set(options) - set(cls.option_names()))
    if unknown:
        allowed = ", ".join(cls.option_names()) or "none"
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; its options: {allowed}")
    return cls(**options)


def method_of(method: str | Method, options: Mapping, caller: str) -> Method:
    """The :class:`Method` a call names: a name with its options (:func:`method_named`), or a
    method object, which takes no options there (``TypeError``)."""
    if isinstance(method, Method):
        if options:
            raise TypeError(f"{method.name}: pass options when building the method, not to {caller}")
        return method
    return method_named(method, **options)


def aggregate(
    method: str | Method,
    updates: Sequence[ClientUpdate],
    *,
    modules: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
    workers: int | None = None,
    max_norm_ratio: float = MAX_NORM_RATIO,
    previous: Mapping[str, LowRank] | None = None,
    top_rank: int | None = None,
    max_weight: float = 1.0,
    **options,
) -> AggregationResult:
    """Aggregate one round of client updates with ``method``: a name in ``AGGREGATORS`` (with its
    options as keywords) or a :class:`Method` object.

    ``modules``/``shapes``: the modules every update must cover and their ``(m, n)`` (default:
    the most common among the updates). ``seed``: for fresh and padded ``A`` inits (and FFA's
    frozen ``A``). ``workers``: compute every module's spectrum (and the singular vectors clients
    get) before returning, that many modules at a time (:meth:`AggregationResult.precompute`);
    ``None`` (default): each module on first use, in the calling thread.
    ``max_norm_ratio``: refuse an update whose norm in a module (``||s B A||_F``, or the uploaded
    factor's for methods that upload one) exceeds this many times the round's median there
    (the lower median, applied from 3 updates on; 0: off).
    ``previous``: the previous round's global update per module, which a method carries on
    (:meth:`Method.carry`: the components no update reached, or carryover's share), up to
    ``top_rank`` directions.
    ``max_weight``: the largest share of the round one update may get, in (0, 1]; a share over it
    is cut to it and the rest spread over the others by their counts (water-filling,
    :func:`~raflora.aggregation.validate.capped_shares`); 1 (default): ``p_i = n_i / sum n``.
    Malformed updates land in ``result.rejected``; raises ``NoValidUpdates`` when none is left,
    and nothing else but ``ValueError``/``TypeError`` for a bad option: on finite input a failing
    SVD is redone in rescaled float64, and an aggregate that still overflows refuses its largest
    update; the global update is always finite.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    method = method_of(method, options, "aggregate()")
    return method.aggregate(
        updates,
        modules=modules,
        shapes=shapes,
        seed=seed,
        workers=workers,
        max_norm_ratio=max_norm_ratio,
        previous=previous,
        top_rank=top_rank,
        max_weight=max_weight,
    )


def _methods_doc() -> str:
    lines = []
    for name, cls in AGGREGATORS.items():
        opts = ", ".join(
            f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else f"{f.name}=[]"
            for f in cls.option_fields()
        )
        lines.append(f"    - ``{name}``{f' ({opts})' if opts else ''}: {(cls.__doc__ or cls.name).splitlines()[0]}")
    return "\n".join(lines)


aggregate.__doc__ = (
    (aggregate.__doc__ or "") + "\n    Methods (name, options and defaults):\n\n" + _methods_doc() + "\n"
)

__all__ = ["AGGREGATORS", "AggregationResult", "Method", "NoValidUpdates", "aggregate", "method_named"]
