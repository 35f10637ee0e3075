"""The round protocol: the server half aggregates what the clients' turns carry, refuses what it must
and keeps the state; the client half keeps a method's private part on the client."""

from __future__ import annotations

import math
import time

import pytest
import torch

from raflora.config_io import config_from_dict
from raflora.federation.round import close_round, download_bytes, run_client, run_round
from raflora.federation.setup import build_setup
from raflora.federation.state import FederationState
from raflora.federation.transport import wire_size


def make_setup(tmp_path, method="raflora", **federation):
    data = {
        "run": {"name": "t", "seed": 2, "rounds": 2, "threads": 1, "out": str(tmp_path / method)},
        "federation": {"num_clients": 3, "method": method, **federation},
        "ranks": {"policy": "cycle", "ranks": [2, 4, 8], "r_max": 8},
        "train": {"local_steps": 2, "lr": 0.02, "batch_size": 8},
        "task": {"name": "synthetic", "train_size": 90, "test_size": 30},
    }
    setup = build_setup(config_from_dict(data))
    return setup, FederationState(starts=setup.fresh_starts(), head=setup.model.get_head(None))


def turns_of(setup, state, kept=None):
    kept = {} if kept is None else kept
    return {c: run_client(setup, state, 1, c, kept) for c in setup.sample_clients(1)}


def test_close_round_aggregates_the_turns_it_is_given(tmp_path):
    setup, state = make_setup(tmp_path)
    turns = turns_of(setup, state)
    updates = [turns[c].update for c in sorted(turns)]
    record = close_round(setup, state, 1, sorted(turns), turns, [], time.perf_counter())
    assert record["accepted"] == 3 and record["rejected"] == [] and state.round == 1
    assert record["bytes_up"] == sum(t.bytes_up for t in turns.values())
    assert record["method"] == "raflora" and math.isfinite(record["accuracy"])
    expected = setup.method.aggregate(updates, modules=sorted(setup.shapes), shapes=setup.shapes, seed=2)
    for m in setup.shapes:
        torch.testing.assert_close(state.delta[m].dense(), expected.delta(m), rtol=0, atol=0)
        for rank, starts in state.starts.items():
            assert starts[m].rank == rank and starts[m].scale == setup.scales[rank]


def test_missing_replies_and_a_bad_head_are_refused_and_the_round_goes_on(tmp_path):
    setup, state = make_setup(tmp_path)
    turns = turns_of(setup, state)
    sampled = sorted(turns)
    del turns[sampled[0]]
    bad = turns[sampled[1]]
    bad.head = {k: torch.full_like(v, float("nan")) for k, v in bad.head.items()}
    refused = [{"client": sampled[0], "module": None, "reason": "client 0: no reply"}]
    record = close_round(setup, state, 1, sampled, turns, refused, time.perf_counter())
    reasons = [r["reason"] for r in record["rejected"]]
    assert reasons[0] == "client 0: no reply" and any("head contains NaN" in r for r in reasons)
    assert record["accepted"] == 1 and state.delta


def test_no_valid_update_leaves_the_state_as_it_was(tmp_path):
    setup, state = make_setup(tmp_path)
    before = {r: {m: f.B.clone() for m, f in s.items()} for r, s in state.starts.items()}
    turns = turns_of(setup, state)
    for turn in turns.values():
        for f in turn.update.factors.values():
            f.B.fill_(float("inf"))
    record = close_round(setup, state, 1, sorted(turns), turns, [], time.perf_counter())
    assert record["accepted"] == 0 and "no valid client update" in record["rejected"][-1]["reason"]
    assert "rho_rmin" not in record and not state.delta
    assert all(torch.equal(state.starts[r][m].B, b) for r, bs in before.items() for m, b in bs.items())


def test_merge_methods_send_the_whole_global_stack(tmp_path):
    setup, state = make_setup(tmp_path, "flora")
    assert download_bytes(setup, state) == 0, "round 1: nothing merged yet"
    run_round(setup, state, 1, {})
    stack = {m: type(next(iter(state.starts[2].values())))(f.A, f.B, 1.0) for m, f in state.delta.items()}
    assert download_bytes(setup, state) == wire_size(stack, "float32", "AB") > 0
    assert state.base, "flora merges the update into the base"


def test_fedsa_clients_keep_their_b_and_the_server_holds_none(tmp_path):
    setup, state = make_setup(tmp_path, "fedsa")
    kept: dict = {}
    turns = turns_of(setup, state, kept)
    assert set(kept) == set(turns)
    for c, turn in turns.items():
        for m, f in turn.update.factors.items():
            assert torch.count_nonzero(f.B) == 0, "the server receives no B"
            assert torch.count_nonzero(kept[c][m]) > 0, "the client kept its trained B"
    record = close_round(setup, state, 1, sorted(turns), turns, [], time.perf_counter(),
                         evaluate_clients=lambda: {c: {"accuracy": 0.5 + c / 10, "loss": 1.0} for c in turns})
    assert not state.delta
    assert record["accuracy"] == pytest.approx(sum(0.5 + c / 10 for c in turns) / len(turns))
    assert set(record["accuracy_by_client"]) == {str(c) for c in turns}
