"""Checks shared by the per-method test modules: run the library, compare with ``reference``."""

from __future__ import annotations

import random

import torch

from raflora import aggregate

from .reference import (
    F64,
    TOLERANCE,
    assert_close,
    assert_singular_values,
    best_rank,
    dense_global,
    random_updates,
    ref_delta,
    ref_factors,
)

DTYPES = (torch.float32, torch.float64)


def random_ranks(seed: int, homogeneous: bool = False) -> list[int]:
    """2-5 clients; heterogeneous sets always hold at least two distinct ranks."""
    rng = random.Random(10_000 + seed)
    count = rng.randint(2, 5)
    if homogeneous:
        return [rng.randint(1, 8)] * count
    ranks = [rng.choice([1, 2, 3, 4, 6, 8]) for _ in range(count)]
    while len(set(ranks)) < 2:
        ranks[0] = rng.choice([1, 2, 3, 4, 6, 8])
    return ranks


def check_delta(method: str, updates, dtype, **options):
    """Every module's delta and spectrum match the dense reference; returns the result."""
    res = aggregate(method, updates, **options)
    assert res.rejected == []
    for module in res.modules:
        expected = ref_delta(method, updates, module, **options)
        got = dense_global(res, module)
        assert got.dtype == dtype, "the result keeps the inputs' dtype"
        assert tuple(got.shape) == tuple(expected.shape)
        assert_close(got, expected, dtype, f"{method} {module}")
        assert_singular_values(res, module, expected, dtype)
    return res


def check_truncation_hand_back(method: str, seed: int, ranks, **kwargs) -> None:
    """A client of rank r gets components 1..r of the averaged pair with its scale divided out;
    beyond the global rank it gets B = 0 and a non-zero (trainable) A."""
    updates = random_updates(seed, ranks, **kwargs)
    res = aggregate(method, updates)
    for module in res.modules:
        B, A = ref_factors(method, updates, module)
        r_max = A.shape[0]
        for r in sorted(set(ranks)) + [r_max + 2]:
            scale = 0.5 + r  # any positive scale; a different one per rank catches a wrong divide
            f = res.client_factors(module, r, scale=scale)
            assert f.rank == r and f.scale == scale
            k = min(r, r_max)
            assert_close(f.A[:k], A[:k], F64, f"{method} A[:{r}]")
            assert_close(f.B[:, :k] * scale, B[:, :k], F64, f"{method} B[:, :{r}]")
            if r > r_max:
                assert torch.count_nonzero(f.B[:, r_max:]) == 0
                assert torch.count_nonzero(f.A[r_max:]) == f.A[r_max:].numel()
                # Padding must not change the product the client starts from.
                assert_close(f.scale * f.B @ f.A, B @ A, F64, f"{method} padded product")


def check_svd_hand_back(method: str, seed: int, ranks, dtype, **options) -> None:
    """``scale * B @ A`` of the handed-back factors is the best rank-r approximation."""
    updates = random_updates(seed, ranks, dtype=dtype)
    res = aggregate(method, updates, **options)
    for module in res.modules:
        dense = ref_delta(method, updates, module, **options)
        m, n = dense.shape
        for r in sorted(set(ranks)) + [min(m, n) + 1]:
            scale = 2.0 / r
            f = res.client_factors(module, r, scale=scale)
            assert f.rank == r and tuple(f.A.shape) == (r, n) and tuple(f.B.shape) == (m, r)
            assert f.A.dtype == dtype and f.B.dtype == dtype
            assert_close(scale * f.B @ f.A, best_rank(dense, r), dtype, f"{method} rank {r}")


def check_merge_hand_back(method: str, seed: int, ranks, **options) -> None:
    """flora/florist: clients merge delta into the base and restart from B = 0, A != 0."""
    updates = random_updates(seed, ranks)
    res = aggregate(method, updates, **options)
    assert res.method.merges_into_base is True
    for module in res.modules:
        m, n = res.shapes[module]
        for r in sorted(set(ranks)):
            f = res.client_factors(module, r, scale=1.5)
            assert tuple(f.B.shape) == (m, r) and tuple(f.A.shape) == (r, n)
            assert torch.count_nonzero(f.B) == 0
            assert torch.linalg.matrix_rank(f.A) == min(r, n), "a fresh A must be trainable in every row"
            assert f.scale == 1.5
            # The same (module, seed) gives every client the same start.
            again = res.client_factors(module, r, scale=1.5)
            assert torch.equal(again.A, f.A)


__all__ = [
    "DTYPES",
    "TOLERANCE",
    "check_delta",
    "check_merge_hand_back",
    "check_svd_hand_back",
    "check_truncation_hand_back",
    "random_ranks",
]


def check_svd_hand_back_stays_trainable(method: str) -> None:
    """Directions the global update lacks come back as B = 0 with a full-rank seeded A, never as
    a zero A row with a zero B column (which no gradient could revive)."""
    from raflora import ClientUpdate, LoRAFactors

    updates = random_updates(3, [2, 4])
    # All-zero round (e.g. a module the loss never reaches): every B is zero.
    zero = [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A, B=torch.zeros_like(f.B), scale=f.scale) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in updates
    ]
    # Rank-deficient round: both clients upload the same rank-1 product b a^T through every
    # component, so delta has rank 1 while the stack holds 6 columns.
    a = updates[1].factors["q_proj"].A[:1]
    b = updates[1].factors["q_proj"].B[:, :1]
    zero_rows = torch.zeros((3, a.shape[1]), dtype=F64)
    same = [
        ClientUpdate("x", {"q_proj": LoRAFactors(A=torch.cat([a, zero_rows[:1]]), B=b.repeat(1, 2), scale=1.0)}, 1),
        ClientUpdate("y", {"q_proj": LoRAFactors(A=torch.cat([a, zero_rows]), B=b.repeat(1, 4), scale=1.0)}, 1),
    ]
    for ups, expected_rank in ((zero, 0), (same, 1)):
        res = aggregate(method, ups)
        f = res.client_factors("q_proj", 4, scale=1.0)
        n = f.A.shape[1]
        assert torch.linalg.matrix_rank(f.A) == min(4, n), f"{method}: a dead A row was handed back"
        assert int(torch.linalg.matrix_rank(f.B)) == expected_rank
        if expected_rank:
            assert_close(f.B @ f.A, dense_global(res, "q_proj"), F64, f"{method} product")
        assert torch.count_nonzero(f.B[:, expected_rank:]) == 0
