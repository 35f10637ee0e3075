"""Splitting a task's training examples among clients: IID, Dirichlet label skew, natural key.

Every partitioner returns one sorted list of example indices per client; the lists are disjoint,
cover every example, and depend only on the inputs and the seed (``numpy`` is not used: a
``torch.Generator`` keeps the draws identical across platforms and library versions).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def iid_partition(num_examples: int, num_clients: int, seed: int = 0) -> list[list[int]]:
    """A seeded shuffle dealt into ``num_clients`` near-equal shares."""
    if num_clients < 1 or num_examples < num_clients:
        raise ValueError(f"cannot split {num_examples} examples among {num_clients} clients")
    order = torch.randperm(num_examples, generator=_generator(seed)).tolist()
    return [sorted(order[c::num_clients]) for c in range(num_clients)]


def dirichlet_partition(
    labels: Sequence[int], num_clients: int, alpha: float, seed: int = 0, min_examples: int = 4
) -> list[list[int]]:
    """Label skew: each class is split among clients by proportions drawn from Dir(alpha).

    Smaller ``alpha`` gives each client fewer classes. Every client ends with at least
    ``min_examples`` examples: draws are repeated (seeded) a few times, then the largest clients
    give examples to the smallest, so the guarantee holds for any alpha. The Gamma draws use the
    standard library's ``random.Random(seed)`` and the shuffles a ``torch.Generator``.
    """
    n = len(labels)
    if num_clients < 1 or n < num_clients * min_examples:
        raise ValueError(f"cannot give {num_clients} clients at least {min_examples} examples each from {n} examples")
    g = _generator(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    gamma = random.Random(seed)  # Dir(alpha) as normalised Gamma(alpha) draws (stdlib: stable)
    for _attempt in range(20):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for y in sorted(by_class):
            idx = by_class[y]
            order = torch.randperm(len(idx), generator=g).tolist()
            draws = [gamma.gammavariate(float(alpha), 1.0) for _ in range(num_clients)]
            total = sum(draws) or 1.0
            running, cuts = 0.0, []
            for d in draws:
                running += d / total
                cuts.append(int(round(running * len(idx))))
            start = 0
            for c, end in enumerate(cuts):
                end = len(idx) if c == num_clients - 1 else min(max(end, start), len(idx))
                parts[c] += [idx[j] for j in order[start:end]]
                start = end
        if min(len(p) for p in parts) >= min_examples:
            break
    _fill_small(parts, min_examples)
    return [sorted(p) for p in parts]


def _fill_small(parts: list[list[int]], min_examples: int) -> None:
    """Move examples from the largest client to any client below ``min_examples``."""
    while True:
        small = min(range(len(parts)), key=lambda c: (len(parts[c]), c))
        if len(parts[small]) >= min_examples:
            return
        large = max(range(len(parts)), key=lambda c: (len(parts[c]), -c))
        parts[small].append(parts[large].pop())


def key_partition(keys: Sequence[str], num_clients: int) -> list[list[int]]:
    """Natural partition: the sorted distinct keys are dealt round-robin to clients, so each
    key's examples stay on one client (with as many clients as keys, one key per client)."""
    distinct = sorted(set(keys))
    if num_clients < 1 or len(distinct) < num_clients:
        raise ValueError(
            f"partition by key needs at least as many distinct keys as clients: "
            f"{len(distinct)} keys for {num_clients} clients"
        )
    owner = {k: i % num_clients for i, k in enumerate(distinct)}
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for i, k in enumerate(keys):
        parts[owner[k]].append(i)
    return parts


def partition(
    scheme: str,
    num_clients: int,
    num_examples: int,
    labels: Sequence[int] | None = None,
    keys: Sequence[str] | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    min_examples: int = 4,
) -> list[list[int]]:
    """Dispatch on ``scheme`` ("iid", "dirichlet", "by_key")."""
    if scheme == "iid":
        return iid_partition(num_examples, num_clients, seed)
    if scheme == "dirichlet":
        if labels is None:
            raise ValueError("partition scheme 'dirichlet' needs labels; this task has no train_labels")
        return dirichlet_partition(labels, num_clients, alpha, seed, min_examples)
    if scheme == "by_key":
        if keys is None:
            raise ValueError("partition scheme 'by_key' needs keys; this task has no train_keys")
        return key_partition(keys, num_clients)
    raise ValueError(f"unknown partition scheme {scheme!r}; choose iid, dirichlet or by_key")
