"""What the server checks in each client's turn before it aggregates anything, against what it knew
before the round: the example count (the server's, never the reply's), the rank it assigned, its
factor dtype, and the head (the model's keys, shapes and real floating dtype, finite, and a change
from the global head within ``federation.max_norm_ratio`` times the round's median change).

A turn refused here is refused whole: neither its factors nor its head reach the aggregate. Both
runtimes close a round through :func:`raflora.federation.round.close_round`, which calls
:func:`check_turns` first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from raflora.aggregation.validate import lower_median, power_text
from raflora.lora import LoRAFactors

if TYPE_CHECKING:  # round.py imports this module
    from raflora.federation.round import ClientTurn

MIN_HEAD_TURNS = 3  # as for the factors' norm bound: below that no majority tells which change is off


def head_problem(head, reference: Mapping[str, Tensor]) -> str | None:
    """Why ``head`` is not a head of this model (``reference``: the global head), else None."""
    if not isinstance(head, Mapping) or set(head) != set(reference):
        keys = sorted(map(str, head)) if isinstance(head, Mapping) else type(head).__name__
        return f"head parameters {keys} are not the model's {sorted(reference)}"
    for key, want in reference.items():
        t = head[key]
        if not isinstance(t, Tensor):
            return f"head parameter {key!r} is a {type(t).__name__}, not a tensor"
        if t.is_complex() or not t.is_floating_point() or t.dtype != want.dtype:
            return f"head parameter {key!r} is {t.dtype}, the model's is {want.dtype}"
        if t.shape != want.shape:
            return f"head parameter {key!r} has shape {tuple(t.shape)}, the model's is {tuple(want.shape)}"
        if not bool(torch.isfinite(t).all()):
            return "head contains NaN or Inf"
    return None


def factor_problem(factors, rank: int, dtype: torch.dtype) -> tuple[str, str] | None:
    """``(module, why)`` when ``factors`` are not of the client's assigned ``rank`` or the server's
    ``dtype``, else None; anything else malformed is left to
    :func:`raflora.aggregation.validate.check_updates`."""
    if not isinstance(factors, Mapping):
        return None
    for module, f in sorted(factors.items(), key=lambda item: str(item[0])):
        if not isinstance(f, LoRAFactors) or not isinstance(f.A, Tensor) or not isinstance(f.B, Tensor):
            continue
        if f.A.dim() == 2 and f.A.shape[0] != rank:
            return module, f"module {module!r}: rank {f.A.shape[0]}, this client's rank is {rank}"
        if f.A.dtype != dtype or f.B.dtype != dtype:
            return module, f"module {module!r}: factors are {f.A.dtype} and {f.B.dtype}, the server's are {dtype}"
    return None


def turn_problem(turn: ClientTurn, known: int, rank: int, dtype: torch.dtype, head: Mapping[str, Tensor]):
    """``(module or None, why)`` when the server refuses ``turn`` (``known``: the server's example
    count of the client), else None."""
    said = turn.update.num_examples
    if isinstance(said, bool) or said != known:
        return None, f"says {said!r} examples, the server knows {known}"
    in_factors = factor_problem(turn.update.factors, rank, dtype)
    if in_factors:
        return in_factors
    in_head = head_problem(turn.head, head)
    return (None, in_head) if in_head else None


def log2_change(head: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """``log2 ||head - reference||_F`` over every head parameter (float64; -inf for no change)."""
    total = sum(float(((head[k].double() - reference[k].double()) ** 2).sum()) for k in reference)
    return 0.5 * math.log2(total) if total > 0 else -math.inf


def head_outliers(changes: Mapping[int, float], max_norm_ratio: float) -> dict[int, str]:
    """The clients whose head change (``log2``) is over ``max_norm_ratio`` times the round's lower
    median change, with the reason: the factors' rule (:func:`~raflora.aggregation.validate.norm_outliers`)."""
    if not max_norm_ratio or len(changes) < MIN_HEAD_TURNS:
        return {}
    median = lower_median(list(changes.values()))
    if median == -math.inf:
        return {}
    limit = math.log2(max_norm_ratio)
    return {
        c: (
            f"head change {power_text(v)} is {power_text(v - median)} times the round's median "
            f"{power_text(median)} (max_norm_ratio {max_norm_ratio:g})"
        )
        for c, v in changes.items()
        if v - median > limit
    }


def check_turns(
    turns: Mapping[int, ClientTurn],
    counts: Mapping[int, int],
    ranks: Mapping[int, int] | list[int],
    dtype: torch.dtype,
    head: Mapping[str, Tensor],
    max_norm_ratio: float,
) -> tuple[dict[int, ClientTurn], list[dict]]:
    """The turns the server accepts for aggregation, each update weighted by the server's count
    ``counts[client]``, and the refused ones as ``{"client", "module", "reason"}``.

    A turn is refused whole when its reply's example count is not the server's, a factor is not of
    the assigned ``ranks[client]`` or the server's ``dtype``, its head is not the model's
    (``head``: keys, shapes, dtype, real, finite), or its head change is over ``max_norm_ratio``
    times the round's median (from 3 turns on)."""
    kept: dict[int, ClientTurn] = {}
    refused: list[dict] = []
    for client, turn in turns.items():
        problem = turn_problem(turn, counts[client], ranks[client], dtype, head)
        if problem:
            refused.append({"client": client, "module": problem[0], "reason": f"client {client!r}: {problem[1]}"})
        else:
            kept[client] = turn
    changes = {c: log2_change(t.head, head) for c, t in kept.items()}
    for client, reason in sorted(head_outliers(changes, max_norm_ratio).items()):
        refused.append({"client": client, "module": None, "reason": f"client {client!r}: {reason}"})
        del kept[client]
    # the weight is the server's count (equal to the reply's here), as the server's own int
    return {c: replace(t, update=replace(t.update, num_examples=int(counts[c]))) for c, t in kept.items()}, refused
