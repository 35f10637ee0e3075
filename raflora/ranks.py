"""Which LoRA rank each client trains with, from the ``[ranks]`` policy (fixed for the whole run).

- ``explicit``: ``ranks`` lists one rank per client.
- ``cycle``: ``ranks`` repeated over the clients (``[2, 4, 8, 16]`` -> 2, 4, 8, 16, 2, 4, ...).
- ``groups``: ``ranks[k]`` for a share ``shares[k]`` of the clients (largest-remainder rounding),
  assigned to clients in a seeded order.
- ``heavy_tail``: powers of two from ``r_min`` to ``r_max`` drawn with probability ``~ 1 / r``:
  many low-rank clients and a few high-rank ones.
- ``uniform``: integers drawn uniformly from ``[r_min, r_max]``.
- ``homogeneous``: every client has ``rank``.
"""

from __future__ import annotations

import random

from raflora.config import RanksConfig


def _group_counts(shares: list[float], n: int) -> list[int]:
    exact = [s * n for s in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


def client_ranks(config: RanksConfig, num_clients: int, seed: int = 0) -> list[int]:
    """The rank of each client ``0 .. num_clients - 1``."""
    rng = random.Random(f"ranks-{seed}")
    policy = config.policy
    if policy == "explicit":
        return list(config.ranks)
    if policy == "cycle":
        return [config.ranks[c % len(config.ranks)] for c in range(num_clients)]
    if policy == "homogeneous":
        return [config.rank] * num_clients
    if policy == "groups":
        ranks = [r for r, count in zip(config.ranks, _group_counts(config.shares, num_clients)) for _ in range(count)]
        rng.shuffle(ranks)
        return ranks
    if policy == "uniform":
        return [rng.randint(config.r_min, config.r_max) for _ in range(num_clients)]
    if policy == "heavy_tail":
        levels, r = [], config.r_min
        while r <= config.r_max:
            levels.append(r)
            r *= 2
        return rng.choices(levels, weights=[1.0 / level for level in levels], k=num_clients)
    raise ValueError(f"unknown rank policy {policy!r}")
