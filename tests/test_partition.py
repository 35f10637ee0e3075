"""Partitioners: disjoint, complete, seeded, and every client gets examples."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from raflora.config import RanksConfig
from raflora.partition import dirichlet_partition, iid_partition, key_partition, partition
from raflora.ranks import client_ranks


def _check_cover(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    assert all(p == sorted(p) for p in parts)


def test_iid_is_balanced_and_seeded():
    parts = iid_partition(103, 10, seed=1)
    _check_cover(parts, 103)
    assert {len(p) for p in parts} <= {10, 11}
    assert parts == iid_partition(103, 10, seed=1) and parts != iid_partition(103, 10, seed=2)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_covers_and_keeps_a_minimum(alpha):
    labels = [random.Random(i).randrange(5) for i in range(500)]
    parts = dirichlet_partition(labels, 10, alpha, seed=0, min_examples=5)
    _check_cover(parts, 500)
    assert min(len(p) for p in parts) >= 5
    assert parts == dirichlet_partition(labels, 10, alpha, seed=0, min_examples=5)


def test_small_alpha_skews_labels():
    labels = [i % 5 for i in range(1000)]

    def classes_per_client(alpha):
        parts = dirichlet_partition(labels, 10, alpha, seed=0)
        return sum(sum(1 for c in Counter(labels[i] for i in p).values() if c >= 5) for p in parts) / 10

    assert classes_per_client(0.1) < classes_per_client(100.0)
    assert classes_per_client(100.0) == 5


def test_dirichlet_refuses_impossible_minimum():
    with pytest.raises(ValueError, match="at least 4"):
        dirichlet_partition([0] * 10, 5, 0.5, min_examples=4)


def test_key_partition_keeps_each_key_on_one_client():
    keys = [f"user{i % 7}" for i in range(70)]
    parts = key_partition(keys, 3)
    _check_cover([sorted(p) for p in parts], 70)
    owners = {}
    for c, p in enumerate(parts):
        for i in p:
            assert owners.setdefault(keys[i], c) == c
    with pytest.raises(ValueError, match="7 keys for 8 clients"):
        key_partition(keys, 8)


def test_dispatch_needs_labels_or_keys():
    with pytest.raises(ValueError, match="train_labels"):
        partition("dirichlet", 2, 10)
    with pytest.raises(ValueError, match="train_keys"):
        partition("by_key", 2, 10)


def test_rank_policies():
    assert client_ranks(RanksConfig(policy="cycle", ranks=[2, 4, 8]), 5) == [2, 4, 8, 2, 4]
    assert client_ranks(RanksConfig(policy="homogeneous", rank=4), 3) == [4, 4, 4]
    groups = client_ranks(RanksConfig(policy="groups", ranks=[64, 16, 4], shares=[0.1, 0.4, 0.5], r_max=64), 10)
    assert Counter(groups) == {64: 1, 16: 4, 4: 5}
    tail = client_ranks(RanksConfig(policy="heavy_tail", r_min=2, r_max=32), 400, seed=1)
    counts = Counter(tail)
    assert set(counts) <= {2, 4, 8, 16, 32} and counts[2] > counts[32]
    uniform = client_ranks(RanksConfig(policy="uniform", r_min=3, r_max=9), 200)
    assert min(uniform) >= 3 and max(uniform) <= 9
