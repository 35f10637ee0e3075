"""What every aggregation method is: one small class, shaped like a PEFT config or a Flower strategy.

A method's **options** are dataclass fields; each field's type, default and help (``option(...)``)
live there and nowhere else (the config reader, ``--set federation.method.KEY=...``, the CLI help
and docs/usage.md's reference all read them). Its **behaviour** is a few class attributes and
methods that the runtimes read instead of comparing method names:

- ``uploads``: which factors a client sends (``"AB"``, ``"A"``, ``"B"``);
- ``trains_a``: whether clients train ``A`` (FFA-LoRA freezes it);
- ``merges_into_base``: whether clients fold the global update into the frozen weight and start a
  fresh adapter every round (FLoRA, FLoRIST);
- ``mixed_ranks``: whether one round may mix ranks (FedIT may not);
- ``private``: the factor each client keeps for itself and never sends (FedSA-LoRA's ``B``);
- ``wants_previous``: whether :meth:`carry` reads the previous round's global update (carryover,
  this library's own method, always; raFLoRA with its option ``empty_partition = "keep"``; the
  baselines never): the runtimes pass it exactly when the method asks, and nothing else decides;
- ``result_type``: what a client of rank ``r`` starts from next round
  (:mod:`raflora.aggregation.result`);
- :meth:`refuse` (method-specific checks) and :meth:`combine` (the formula, a pure function of the
  accepted updates returning a :class:`~raflora.lora.LowRank` per module).

Adding a method is one file with one such class and one line in the registry
(:data:`raflora.aggregation.AGGREGATORS`).

A round is a few steps, methods of this class that both :meth:`Method.aggregate` (updates in memory)
and :func:`raflora.aggregation.streamed.aggregate_files` (uploads on disk, one module at a time)
run: :meth:`~Method.check_round`, validation (``check_updates``), each of
:meth:`~Method.refusal_steps`, :meth:`~Method.combine_safely`, :meth:`~Method.carried`,
:meth:`~Method.build_result`. A new step or hook goes there, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from raflora.aggregation.numerics import NumericalFailure, all_finite, fits, log2_norm, log2_product_norm
from raflora.aggregation.result import AggregationResult
from raflora.aggregation.stacking import Stack
from raflora.aggregation.validate import (
    Checked,
    NoValidUpdates,
    Refusals,
    check_max_weight,
    check_ratio,
    check_updates,
    norm_outliers,
    update_log2_norms,
)
from raflora.lora import ClientUpdate, LoRAFactors, LowRank

MAX_NORM_RATIO = 10.0  # federation.max_norm_ratio's default: an update 10x the median norm is refused


def fits_dtype(factors: LowRank, dtype: torch.dtype) -> bool:
    """Whether a global update's factors are finite and its product's norm (so every value of
    ``B @ A`` and every singular value) is finite in ``dtype``; ``||B A|| <= ||B|| ||A||`` spares
    the Gram products whenever the factors are far from the range's end."""
    if isinstance(factors, Stack):
        # Its parts are accepted (finite) updates: bounds from the parts spare forming the stack.
        norm_b, norm_a = factors.log2_norm_bounds()
        if fits(norm_b, dtype) and fits(norm_a, dtype) and fits(norm_b + norm_a, dtype):
            return True
    B, A = factors.B, factors.A
    if not (all_finite(B) and all_finite(A)):
        return False
    norm_b, norm_a = log2_norm(B), log2_norm(A)
    if not (fits(norm_b, dtype) and fits(norm_a, dtype)):
        return False
    return fits(norm_b + norm_a, dtype) or fits(log2_product_norm(B, A), dtype)


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING) -> Any:
    """A method option: a dataclass field with its help text (shown by ``raflora run --help`` and
    in docs/usage.md)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Method:
    """Base class of the aggregation methods; subclasses are dataclasses of their options."""

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    uploads: ClassVar[str] = "AB"
    trains_a: ClassVar[bool] = True
    merges_into_base: ClassVar[bool] = False
    mixed_ranks: ClassVar[bool] = True
    private: ClassVar[str] = ""
    result_type: ClassVar[type[AggregationResult]] = AggregationResult

    def __post_init__(self) -> None:
        self.check()

    # -- options ---------------------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.option_fields())

    def options(self) -> dict[str, Any]:
        """The option values, as the config file writes them."""
        return {f.name: getattr(self, f.name) for f in self.option_fields()}

    def check(self) -> None:
        """Raise ``ValueError`` naming the option when a value is out of range."""

    def bind(self, client_ranks: Sequence[int], num_sampled: int) -> Method:
        """This method as used in a round of a federation whose clients have ``client_ranks`` and of
        which ``num_sampled`` were sampled (fills options that default to the federation's own).
        Default: itself."""
        return self

    def check_ranks(self, client_ranks: Sequence[int]) -> None:
        """Raise ``ValueError`` when this method cannot serve a federation of these ranks."""
        ranks = sorted(set(client_ranks))
        if not self.mixed_ranks and len(ranks) > 1:
            raise ValueError(f"{self.name!r} needs one rank for every client, [ranks] gives {ranks}")

    def rank_partitions(self, client_ranks: Sequence[int]) -> list[int]:
        """The rank levels that split a spectrum into partitions (diagnostics): the clients' ranks."""
        return sorted(set(client_ranks))

    def scale_for(self, rank: int, scale: float) -> float:
        """The scale clients of ``rank`` train with, given the config's ``scale``; default: it."""
        return scale

    # -- the server's arithmetic -------------------------------------------------------------------
    def refuse(self, checked: Checked, seed: int) -> Refusals:
        """Updates this method cannot combine, by index, with the module and the reason."""
        return {}

    def combine(self, checked: Checked, seed: int) -> Mapping[str, LowRank]:
        """The round's global update per module, ``LowRank(A=..., B=...)`` with every scale folded in."""
        raise NotImplementedError

    def aggregate(
        self,
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
    ) -> AggregationResult:
        """Validate ``updates``, drop what :meth:`refuse` refuses and the norm outliers
        (``max_norm_ratio``, :func:`~raflora.aggregation.validate.norm_outliers`), :meth:`combine`
        the rest (:meth:`combine_safely`). ``previous``: the previous round's global update, for a
        method that :attr:`wants_previous` (:meth:`carry` decides what of it stays, up to
        ``top_rank``); ``ValueError`` for any other method. ``max_weight``: no update's share of
        the round above it (:func:`~raflora.aggregation.validate.capped_shares`; 1: FedAvg's shares).

        The steps are the ones :func:`raflora.aggregation.streamed.aggregate_files` runs module by
        module: :meth:`check_round`, ``check_updates``, each of :meth:`refusal_steps`,
        :meth:`combine_safely`, :meth:`carried`, :meth:`build_result`."""
        ratio = self.check_round(max_norm_ratio, previous, max_weight)
        checked = check_updates(updates, modules, shapes, max_weight)
        for step in self.refusal_steps(seed, ratio, workers):
            found = step(checked)
            if found:
                checked = checked.without(found)
        checked, factors = self.combine_safely(checked, seed)
        result = self.build_result(checked, self.carried(checked, factors, previous, top_rank), seed)
        return result if workers is None else result.precompute(workers)

    # -- the steps of a round (aggregate above, aggregate_files in streamed.py) -------------------
    def check_round(
        self, max_norm_ratio: float, previous: Mapping[str, LowRank] | None, max_weight: float = 1.0
    ) -> float:
        """The round's arguments, checked before any update is read: ``max_norm_ratio`` as a float
        (``ValueError`` unless 0 or >= 1), ``max_weight`` (``ValueError`` unless in (0, 1]), and
        ``ValueError`` for a ``previous`` this method does not read (:attr:`wants_previous`)."""
        ratio = check_ratio(max_norm_ratio)
        check_max_weight(max_weight)
        if previous and not self.wants_previous:
            raise ValueError(f"{self.name}: does not read the previous global update; pass previous=None")
        return ratio

    def refusal_steps(
        self, seed: int, max_norm_ratio: float, workers: int | None = None
    ) -> tuple[Callable[[Checked], Refusals], ...]:
        """The checks that refuse updates after validation, in the order a round applies them, each
        deciding on the updates still in the round: this method's own (:meth:`refuse`), then the
        norm bound (:func:`~raflora.aggregation.validate.norm_outliers`)."""
        return (
            lambda checked: self.refuse(checked, seed),
            lambda checked: norm_outliers(checked, self.uploads, max_norm_ratio, workers),
        )

    def carried(
        self,
        checked: Checked,
        factors: Mapping[str, LowRank],
        previous: Mapping[str, LowRank] | None,
        top_rank: int | None,
    ) -> Mapping[str, LowRank]:
        """``factors`` with what each module carries on of ``previous`` (:meth:`carry`); unchanged
        when the round passes no previous update."""
        if not previous:
            return factors
        return {m: self.carry(f, previous.get(m), checked, m, top_rank) for m, f in factors.items()}

    def build_result(self, checked: Checked, factors: Mapping[str, LowRank], seed: int) -> AggregationResult:
        """The round's result: :attr:`result_type` of the accepted updates and the global update."""
        return self.result_type(self, checked, factors, seed)

    def combine_safely(self, checked: Checked, seed: int) -> tuple[Checked, Mapping[str, LowRank]]:
        """:meth:`combine`, never failing on finite input nor returning a global update that is not
        finite in its dtype: a combine that raises ``LinAlgError`` or overflows is repeated in
        float64; if that fails too, the update with the largest norm in the failing module is
        refused with the reason and the rest combined again (``NoValidUpdates`` when none is left)."""
        while True:
            try:
                factors = self.combine(checked, seed)
                module = next((m for m, f in factors.items() if not fits_dtype(f, checked.dtype)), None)
                why = "the aggregate overflows"
            except (torch.linalg.LinAlgError, NumericalFailure) as err:
                module, why = None, f"the aggregate failed ({str(err).splitlines()[0]})"
                factors = None
            if factors is not None and module is None:
                return checked, factors
            if checked.dtype != torch.float64:
                checked = checked.cast(torch.float64)
                continue
            # The module is unknown when combine raised: blame the largest norm of any module.
            norms = {m: update_log2_norms(checked, m, self.uploads) for m in ([module] if module else checked.modules)}
            module, worst = max(
                ((m, i) for m, ns in norms.items() for i in range(len(ns))), key=lambda mi: norms[mi[0]][mi[1]]
            )
            cid = checked.updates[worst].client_id
            checked = checked.without(
                {
                    worst: (
                        module,
                        f"client {cid!r}: module {module!r}: {why} in float64; this update has the largest norm",
                    )
                }
            )

    @classmethod
    def read_legacy_rule(cls, rule: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        """How a run folder written while ``federation.empty_partition`` was a federation key reads
        today: ``(method name, options, what it is read as)``, the rule its code ran; ValueError
        when this version cannot rerun it. Default: ``drop`` was every method's own rule, ``keep``
        is now raflora's alone."""
        if rule != "drop":
            raise ValueError(
                f'federation.empty_partition = "{rule}" with method {cls.name} ran a rule that is now '
                "raflora's alone (federation.method.empty_partition); this version cannot rerun it"
            )
        return cls.name, dict(options), f"{cls.name}, whose own rule it was"

    @property
    def wants_previous(self) -> bool:
        """Whether :meth:`carry` reads the previous round's global update; the runtimes pass it
        exactly then. Default: no."""
        return False

    def carry(
        self, factors: LowRank, previous: LowRank | None, checked: Checked, module: str, top_rank: int | None
    ) -> LowRank:
        """What of the previous round's global update ``previous`` this round's ``factors`` of
        ``module`` carry on (called only when :attr:`wants_previous`). Default: nothing."""
        return factors

    # -- the client's side -------------------------------------------------------------------------
    def missing_part(
        self, module: str, part: str, rank: int, shape: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """The factor ``part`` of a module that did not travel, as the receiver holds it: zeros by
        default (the receiver has nothing); FFA-LoRA regenerates its frozen ``A`` from the seed."""
        m, n = shape
        return torch.zeros((rank, n) if part == "A" else (m, rank), dtype=dtype)

    def client_start(
        self, received: Mapping[str, LoRAFactors], kept: Mapping[str, Tensor] | None
    ) -> dict[str, LoRAFactors]:
        """What a client trains from: the factors it received, with its ``private`` factor put
        back from what it ``kept`` after its last round (``None``: it has not trained yet)."""
        if not self.private or not kept:
            return dict(received)
        if self.private == "A":
            return {m: dataclasses.replace(f, A=kept[m]) for m, f in received.items()}
        return {m: dataclasses.replace(f, B=kept[m]) for m, f in received.items()}

    def client_keeps(self, trained: Mapping[str, LoRAFactors]) -> dict[str, Tensor]:
        """What a client stores for itself after training (its ``private`` factor), else ``{}``."""
        if not self.private:
            return {}
        return {m: getattr(f, self.private).detach().clone() for m, f in trained.items()}

    @classmethod
    def upload_values(cls, m: int, n: int, rank: int) -> int:
        """Values a client of ``rank`` uploads for one ``m x n`` module."""
        return rank * ((m if "B" in cls.uploads else 0) + (n if "A" in cls.uploads else 0))


__all__ = ["Method", "NoValidUpdates", "Refusals", "option"]
