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
- ``keeps_global``: whether :meth:`combine` reads the previous round's global update;
- ``result_type``: what a client of rank ``r`` starts from next round
  (:mod:`raflora.aggregation.result`);
- :meth:`refuse` (method-specific checks) and :meth:`combine` (the formula, a pure function of the
  accepted updates returning a named ``LowRank(B, A)`` per module).

Adding a method is one file with one such class and one line in the registry
(:data:`raflora.aggregation.AGGREGATORS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from raflora.aggregation.result import AggregationResult
from raflora.aggregation.validate import Checked, NoValidUpdates, check_updates
from raflora.lora import ClientUpdate, LoRAFactors, LowRank

Refusals = dict[int, tuple["str | None", str]]  # update index -> (module, reason)


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
    keeps_global: ClassVar[bool] = False
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

    def combine(self, checked: Checked, seed: int) -> dict[str, LowRank]:
        """The round's global update per module, ``LowRank(B, A)`` with every scale folded in."""
        raise NotImplementedError

    def aggregate(
        self,
        updates: Sequence[ClientUpdate],
        *,
        modules: Sequence[str] | None = None,
        shapes: Mapping[str, tuple[int, int]] | None = None,
        seed: int = 0,
        workers: int | None = None,
    ) -> AggregationResult:
        """Validate ``updates``, drop what :meth:`refuse` refuses, :meth:`combine` the rest."""
        checked = check_updates(updates, modules, shapes)
        refused = self.refuse(checked, seed)
        if refused:
            checked = checked.without(refused)
        result = self.result_type(self, checked, self.combine(checked, seed), seed)
        return result if workers is None else result.precompute(workers)

    # -- the client's side -------------------------------------------------------------------------
    def missing_part(self, module: str, part: str, rank: int, shape: tuple[int, int], seed: int,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """The factor ``part`` of a module that did not travel, as the receiver holds it: zeros by
        default (the receiver has nothing); FFA-LoRA regenerates its frozen ``A`` from the seed."""
        m, n = shape
        return torch.zeros((rank, n) if part == "A" else (m, rank), dtype=dtype)

    def client_start(self, received: Mapping[str, LoRAFactors],
                     kept: Mapping[str, Tensor] | None) -> dict[str, LoRAFactors]:
        """What a client trains from: the factors it received, with its ``private`` factor put
        back from what it ``kept`` after its last round (``None``: it has not trained yet)."""
        if not self.private or not kept:
            return dict(received)
        return {m: dataclasses.replace(f, **{self.private: kept[m]}) for m, f in received.items()}

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
