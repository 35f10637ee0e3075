"""What a checkpoint must mean, beyond its checksums: finite numbers, the shapes of the run's model,
a round that agrees with its folder name, its own metrics and the run's ``metrics.jsonl``.

A manifest proves that the bytes are the ones written, not that what was written makes sense (a
``state.json`` claiming round 10**9 made a resume print "done" and skip the remaining rounds; a NaN
state or a wrong head shape crashed it). :func:`state_problem` says what is wrong, or None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass(frozen=True)
class Expected:
    """The shapes a checkpoint of this run must have: the adapted modules' weights ``(m, n)``, the
    head's tensors, and (None: not checked) the client ranks. ``subset``: ``weights`` and ``head``
    hold every tensor of a model, of which the checkpoint names some (a merged export, which loads
    the plain model)."""

    weights: Mapping[str, tuple[int, int]]
    head: Mapping[str, tuple[int, ...]]
    ranks: frozenset[int] | None = None
    subset: bool = False


def metrics_rounds(metrics_file: Path) -> int | None:
    """The last round ``metrics.jsonl`` records (0 for an empty file), None when it cannot be read
    (a checkpoint is then not held to it)."""
    try:
        lines = [line for line in metrics_file.read_text().splitlines() if line.strip()]
        return int(json.loads(lines[-1])["round"]) if lines else 0
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _not_finite(name: str, t: Tensor) -> str | None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return f"{name} holds NaN or infinite values"
    return None


def state_problem(
    state, folder_round: int | None, recorded_rounds: int | None, expected: Expected | None
) -> str | None:
    """Why ``state`` (a :class:`~raflora.federation.state.FederationState`) cannot be resumed from or
    exported, or None. ``folder_round``: the round its folder's name says; ``recorded_rounds``: the
    last round of the run's ``metrics.jsonl`` (None: not checked)."""
    k = state.round
    if k < 1:
        return f"state.json says round {k}; a checkpoint is written after a round (1 or later)"
    if folder_round is not None and k != folder_round:
        return f"state.json says round {k} but the folder is round {folder_round}"
    if len(state.metrics) != k:
        return f"state.json says round {k} but holds the metrics of {len(state.metrics)} rounds"
    last = state.metrics[-1].get("round") if isinstance(state.metrics[-1], dict) else None
    if last != k:
        return f"state.json says round {k} but its last metrics are of round {last}"
    if recorded_rounds is not None and k > recorded_rounds:
        return f"it is of round {k} but metrics.jsonl records {recorded_rounds} rounds"
    tensors = [
        (f"start/{r}/{m}/{part}", getattr(f, part))
        for r, fs in state.starts.items()
        for m, f in fs.items()
        for part in "AB"
    ]
    tensors += [(f"head/{key}", t) for key, t in state.head.items()]
    tensors += [(f"delta/{m}/{part}", getattr(pair, part)) for m, pair in state.delta.items() for part in "BA"]
    tensors += [(f"base/{m}", t) for m, t in state.base.items()]
    for name, t in tensors:
        problem = _not_finite(name, t)
        if problem:
            return problem
    return None if expected is None else shape_problem(state, expected)


def shape_problem(state, expected: Expected) -> str | None:
    """Which tensor of ``state`` does not fit the run's model, or None."""
    weights = expected.weights
    for r, factors in state.starts.items():
        if expected.ranks is not None and r not in expected.ranks:
            return f"it holds a start of rank {r}, which no client of the run has"
        if not (set(factors) <= set(weights) if expected.subset else set(factors) == set(weights)):
            return f"the rank-{r} start covers modules {sorted(factors)}, the model adapts {sorted(weights)}"
        for module, f in factors.items():
            m, n = weights[module]
            if tuple(f.A.shape) != (r, n) or tuple(f.B.shape) != (m, r):
                return f"start/{r}/{module} has A {tuple(f.A.shape)} and B {tuple(f.B.shape)}, expected {(r, n)} and {(m, r)}"
    if not (set(state.head) <= set(expected.head) if expected.subset else set(state.head) == set(expected.head)):
        return f"its head holds {sorted(state.head)}, the model's head {sorted(expected.head)}"
    for key, t in state.head.items():
        if tuple(t.shape) != tuple(expected.head[key]):
            return f"head/{key} has shape {tuple(t.shape)}, the model's {tuple(expected.head[key])}"
    for module, delta in state.delta.items():
        B, A = delta.B, delta.A
        if module not in weights:
            return f"delta/{module}: the model adapts no module of that name"
        m, n = weights[module]
        if B.ndim != 2 or A.ndim != 2 or B.shape[0] != m or A.shape[1] != n or B.shape[1] != A.shape[0]:
            return f"delta/{module} has B {tuple(B.shape)} and A {tuple(A.shape)}, which do not make a {m} x {n} update"
    for module, w in state.base.items():
        if module not in weights or tuple(w.shape) != tuple(weights[module]):
            return f"base/{module} has shape {tuple(w.shape)}, the model's {weights.get(module)}"
    return None
