"""Method.aggregate with the previous global update, which only a method that asks for it gets
(``wants_previous``): raflora with ``empty_partition = "keep"``, whose rank partition that no update
of the round reaches keeps its previous component (the rest is this round's aggregate, checked
against dense float64 SVDs), carryover and consensus (tests/aggregation/test_carryover.py,
test_consensus.py)."""

from __future__ import annotations

import pytest
import torch

from raflora import AGGREGATORS, aggregate
from raflora.aggregation import method_named
from raflora.aggregation.raflora import keep_unreached
from raflora.lora import LowRank

from .reference import F64, assert_close, best_rank, dense_global, random_updates, ref_delta


def previous_round(seed: int = 21):
    """A global update of a round with ranks 2, 4 and 8 (raflora), as the state keeps it."""
    res = aggregate("raflora", random_updates(seed, [2, 4, 8]))
    return {m: res.delta_factors(m) for m in res.modules}, res


def test_unreached_partitions_keep_the_previous_components():
    previous, _ = previous_round()
    shapes = {m: (f.B.shape[0], f.A.shape[1]) for m, f in previous.items()}
    lone = random_updates(5, [2], shapes=shapes)  # a round of one rank-2 client
    kept = aggregate_with(lone, previous)
    dropped = method_named("raflora").aggregate(lone)
    for m, prev in previous.items():
        before = prev.dense()
        # Components 3..8 of the previous global update, from its dense SVD.
        tail = best_rank(before, 8) - best_rank(before, 2)
        assert_close(dense_global(kept, m) - dense_global(dropped, m), tail, F64, m)
        assert_close(dense_global(dropped, m), ref_delta("raflora", lone, m), F64, m)
        assert torch.linalg.matrix_rank(dense_global(kept, m)) == min(8, *shapes[m])
        assert torch.linalg.matrix_rank(dense_global(dropped, m)) == 2


def test_a_rank_8_client_starts_from_the_higher_directions_only_when_kept():
    previous, _ = previous_round()
    shapes = {m: (f.B.shape[0], f.A.shape[1]) for m, f in previous.items()}
    lone = random_updates(5, [2], shapes=shapes)
    kept = aggregate_with(lone, previous)
    dropped = method_named("raflora").aggregate(lone)
    for m in previous:
        start_kept = kept.client_factors(m, 8, scale=1.0)
        start_dropped = dropped.client_factors(m, 8, scale=1.0)
        # raflora hands a rank-8 client the best rank-8 approximation: with keep, directions 3..8
        # of the last round are still there; with drop, the client gets rank 2 and seeded padding.
        assert torch.linalg.matrix_rank(start_kept.B @ start_kept.A) == min(8, *shapes[m])
        assert torch.linalg.matrix_rank(start_dropped.B @ start_dropped.A) == 2
        assert_close(start_kept.B @ start_kept.A, best_rank(dense_global(kept, m), 8), F64, m)


def aggregate_with(updates, previous):
    return method_named("raflora", empty_partition="keep").aggregate(updates, previous=previous, top_rank=8)


def test_a_reached_partition_is_not_kept():
    previous, _ = previous_round()
    shapes = {m: (f.B.shape[0], f.A.shape[1]) for m, f in previous.items()}
    full = random_updates(6, [2, 8], shapes=shapes)
    kept = aggregate_with(full, previous)
    plain = method_named("raflora").aggregate(full)
    for m in previous:
        assert torch.equal(dense_global(kept, m), dense_global(plain, m))


@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_only_carryover_consensus_and_raflora_keep_ask_for_the_previous_update(method):
    assert method_named(method).wants_previous is (method in ("carryover", "consensus"))
    if method == "raflora":
        assert method_named(method, empty_partition="keep").wants_previous


def test_keep_unreached_without_previous_is_the_identity():
    f = LowRank(A=torch.ones(2, 4, dtype=F64), B=torch.ones(3, 2, dtype=F64))
    assert keep_unreached(f, None, 2, 8) is f


@pytest.mark.parametrize("method", [m for m in AGGREGATORS if m not in ("carryover", "consensus")])
def test_a_previous_update_for_a_method_that_does_not_ask_for_it_is_refused(method):
    previous, _ = previous_round()
    shapes = {m: (f.B.shape[0], f.A.shape[1]) for m, f in previous.items()}
    ranks = [2] if method != "fedit" else [4]
    with pytest.raises(ValueError, match=f"{method}: does not read the previous global update"):
        method_named(method).aggregate(random_updates(5, ranks, shapes=shapes), previous=previous)


def test_raflora_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="raflora: empty_partition 'kept' is not known; choose one of drop, keep"):
        method_named("raflora", empty_partition="kept")
