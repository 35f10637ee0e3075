"""The server bounds what a client says (close_round, shared by both runtimes): the weight is the
server's count, capped by federation.max_client_weight; a turn with another count, another rank, a
factor dtype not the server's, or a head that is not the model's (dtype, real, finite, a change
within max_norm_ratio times the round's median) is refused whole: neither its factors nor its head
reach the global model."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from raflora.federation.round import close_round
from raflora.lora import ClientUpdate, LoRAFactors

from .test_round import make_setup, turns_of


def closed(setup, state, turns):
    return close_round(setup, state, 1, sorted(turns), turns, [], time.perf_counter())


def reasons(record) -> dict:
    return {r["client"]: r["reason"] for r in record["rejected"]}


def with_update(turn, **changes):
    return replace(turn, update=replace(turn.update, **changes))


def expected_delta(setup, turns, clients, max_weight=0.5):
    """The global update of ``clients``' updates alone, weighted by the server's counts."""
    updates = [ClientUpdate(c, turns[c].update.factors, len(setup.shards[c])) for c in clients]
    result = setup.method.aggregate(
        updates, modules=sorted(setup.shapes), shapes=setup.shapes, seed=2, max_weight=max_weight
    )
    return {m: result.delta(m) for m in setup.shapes}, result.weights


def assert_global_update(state, want) -> None:
    for m, delta in want.items():
        torch.testing.assert_close(state.delta[m].dense(), delta, rtol=0, atol=0)


@pytest.fixture
def round1(tmp_path):
    setup, state = make_setup(tmp_path, "flexlora", max_client_weight=1.0)
    return setup, state, turns_of(setup, state)


def test_a_claimed_count_is_refused_and_the_weight_is_the_servers(round1):
    setup, state, turns = round1
    honest = {c: t.update.num_examples for c, t in turns.items()}
    assert honest == {c: len(setup.shards[c]) for c in turns}  # an honest reply says the server's count
    turns[1] = with_update(turns[1], num_examples=10**12 - 1)
    record = closed(setup, state, turns)
    assert reasons(record) == {1: f"client 1: says 999999999999 examples, the server knows {honest[1]}"}
    want, weights = expected_delta(setup, turns, [0, 2], max_weight=1.0)
    assert record["accepted"] == 2 and weights == pytest.approx(
        {0: honest[0] / (honest[0] + honest[2]), 2: 1 - honest[0] / (honest[0] + honest[2])}
    )
    assert_global_update(state, want)


@pytest.mark.parametrize("said", [True, 7.5, "40", None])
def test_a_count_of_another_type_is_refused(round1, said):
    setup, state, turns = round1
    turns[0] = with_update(turns[0], num_examples=said)
    assert (
        reasons(closed(setup, state, turns))[0]
        == f"client 0: says {said!r} examples, the server knows {len(setup.shards[0])}"
    )


def test_the_weight_cap_applies_to_the_servers_counts(tmp_path):
    setup, state = make_setup(tmp_path, "flexlora")  # default cap 0.5
    turns = turns_of(setup, state)
    counts = {c: len(setup.shards[c]) for c in turns}
    assert max(counts.values()) / sum(counts.values()) > 0.5  # this partition has a client over half
    record = closed(setup, state, turns)
    want, weights = expected_delta(setup, turns, sorted(turns), max_weight=0.5)
    assert record["accepted"] == 3 and max(weights.values()) == 0.5
    assert_global_update(state, want)


@pytest.mark.parametrize("rank", [8, 20_000])
def test_an_upload_of_another_rank_is_refused(round1, rank):
    setup, state, turns = round1
    client = setup.ranks.index(2)
    factors = {
        m: LoRAFactors(A=torch.zeros(rank, n), B=torch.zeros(mm, rank), scale=f.scale)
        for m, f in turns[client].update.factors.items()
        for mm, n in [setup.shapes[m]]
    }
    turns[client] = with_update(turns[client], factors=factors)
    record = closed(setup, state, turns)
    why = reasons(record)[client]
    assert why.startswith(f"client {client}: module ") and why.endswith(f": rank {rank}, this client's rank is 2")
    assert record["accepted"] == 2


def test_factors_in_another_dtype_are_refused(round1):
    setup, state, turns = round1
    factors = {
        m: LoRAFactors(A=f.A.double(), B=f.B.double(), scale=f.scale) for m, f in turns[0].update.factors.items()
    }
    turns[0] = with_update(turns[0], factors=factors)
    why = reasons(closed(setup, state, turns))[0]
    assert why.endswith("factors are torch.float64 and torch.float64, the server's are torch.float32")


def test_a_head_with_a_huge_bias_is_refused_with_its_factors(round1):
    setup, state, turns = round1
    turns[1].head["head.bias"] = turns[1].head["head.bias"] + torch.tensor([1e4, 0, 0, 0])
    record = closed(setup, state, turns)
    assert "head change" in reasons(record)[1] and "times the round's median" in reasons(record)[1]
    want, _ = expected_delta(setup, turns, [0, 2], max_weight=1.0)
    assert_global_update(state, want)
    # the global head is the other two clients' average: the bias never arrives
    assert float(state.head["head.bias"].abs().max()) < 10


@pytest.mark.parametrize(
    "bad, why",
    [
        (lambda t: t.to(torch.complex64), "is torch.complex64, the model's is torch.float32"),
        (lambda t: t.to(torch.int64), "is torch.int64, the model's is torch.float32"),
        (lambda t: t > 0, "is torch.bool, the model's is torch.float32"),
        (lambda t: t.double(), "is torch.float64, the model's is torch.float32"),
        (lambda t: t[:2], "has shape (2,), the model's is (4,)"),
        (lambda t: t.tolist(), "is a list, not a tensor"),
        (lambda t: torch.full_like(t, float("nan")), "head contains NaN or Inf"),
    ],
)
def test_a_head_that_is_not_the_models_is_refused_with_its_factors(round1, bad, why):
    setup, state, turns = round1
    turns[2].head["head.bias"] = bad(turns[2].head["head.bias"])
    record = closed(setup, state, turns)
    assert reasons(record)[2].endswith(why) and record["accepted"] == 2
    want, _ = expected_delta(setup, turns, [0, 1], max_weight=1.0)
    assert_global_update(state, want)
    assert all(t.dtype == torch.float32 for t in state.head.values())


def test_a_head_with_other_keys_is_refused(round1):
    setup, state, turns = round1
    turns[0].head["extra"] = torch.zeros(3)
    assert "are not the model's" in reasons(closed(setup, state, turns))[0]


def test_with_two_heads_no_change_is_compared(tmp_path):
    # the median rule needs 3 heads (as the factors' norm bound): with 2 neither can be told off
    setup, state = make_setup(tmp_path, "flexlora", max_client_weight=1.0, sample_count=2)
    turns = turns_of(setup, state)
    first = sorted(turns)[0]
    turns[first].head["head.bias"] = turns[first].head["head.bias"] + 100.0
    record = closed(setup, state, turns)
    assert record["accepted"] == 2 and record["rejected"] == []
