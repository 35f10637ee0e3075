"""The round protocol: the server half aggregates what the clients' turns carry, refuses what it must
and keeps the state; the client half keeps a method's private part on the client. Faults: simulated
dropout (seeded, listed as ``dropped``), the norm bound, and the previous global update passed to
exactly the methods that ask for it (raflora's empty_partition option: a rank partition no client of
the round reaches keeps or loses its previous global component; carryover always)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from runtimes.conftest import small_config  # tests/ is on sys.path (it has no __init__.py)

from raflora.config_io import config_from_dict, config_to_toml, load_config
from raflora.federation.round import close_round, download_bytes, dropped_clients, run_client, run_round
from raflora.federation.setup import build_setup
from raflora.federation.state import FederationState
from raflora.federation.transport import wire_size
from raflora.runtimes.embedded import run_federation


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
    expected = setup.method.aggregate(
        updates, modules=sorted(setup.shapes), shapes=setup.shapes, seed=2, max_weight=0.5
    )  # the default federation.max_client_weight: one of the 3 clients holds over half the examples
    assert max(expected.weights.values()) == 0.5
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
    record = close_round(
        setup,
        state,
        1,
        sorted(turns),
        turns,
        [],
        time.perf_counter(),
        evaluate_clients=lambda split: {c: {"accuracy": 0.5 + c / 10, "loss": 1.0} for c in turns},
    )
    assert not state.delta
    assert record["accuracy"] == pytest.approx(sum(0.5 + c / 10 for c in turns) / len(turns))
    assert set(record["accuracy_by_client"]) == {str(c) for c in turns}


# -- faults ----------------------------------------------------------------------------------------
F64 = torch.float64


def test_dropout_drops_that_share_of_the_sampled_clients_seeded_by_round(tmp_path):
    config = config_from_dict(small_config(tmp_path / "r", federation={"num_clients": 10, "dropout": 0.3}))
    setup = build_setup(config)
    sampled = list(range(10))
    rounds = [dropped_clients(setup, r, sampled) for r in range(1, 6)]
    assert all(len(d) == 3 and set(d) <= set(sampled) and d == sorted(d) for d in rounds)
    assert rounds == [dropped_clients(setup, r, sampled) for r in range(1, 6)], "seeded: the same every time"
    assert len({tuple(d) for d in rounds}) > 1, "a different draw each round"
    # Rounded half up: 0.3 of 5 is 1.5 -> 2; of 1 is 0.3 -> 0.
    assert len(dropped_clients(setup, 1, [1, 3, 5, 7, 9])) == 2
    assert dropped_clients(setup, 1, [4]) == []


def test_dropped_clients_do_not_train_and_are_listed(tmp_path):
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 3}, federation={"dropout": 0.5}))
    metrics = run_federation(config)
    for m in metrics:
        assert len(m["dropped"]) == 2 and set(m["dropped"]) <= set(m["clients"])
        assert m["accepted"] == 2 and m["rejected"] == []
    without = run_federation(config_from_dict(small_config(tmp_path / "none", run={"rounds": 1})))
    assert without[0]["dropped"] == [] and without[0]["accepted"] == 4
    assert metrics[0]["bytes_up"] < without[0]["bytes_up"]  # half the clients sent nothing


@pytest.mark.parametrize(
    "key, value, word",
    [
        ("dropout", 1.0, "[0, 1)"),
        ("dropout", -0.1, "[0, 1)"),
        ("max_norm_ratio", 0.5, ">= 1"),
        ("max_norm_ratio", -1.0, ">= 1"),
    ],
)
def test_bad_fault_keys_are_config_errors(tmp_path, key, value, word):
    from raflora.config import ConfigError

    with pytest.raises(ConfigError, match=f"federation.{key}") as info:
        config_from_dict(small_config(tmp_path / "r", federation={key: value}))
    assert word in str(info.value)


@pytest.mark.parametrize(
    "method, options, wants",
    [
        ("raflora", {}, False),
        ("raflora", {"empty_partition": "keep"}, True),
        ("carryover", {}, True),
        ("flexlora", {}, False),
        ("zero_pad", {}, False),
        ("flora", {}, False),
        ("fedsa", {}, False),
    ],
)
def test_the_round_passes_the_previous_update_exactly_when_the_method_asks(tmp_path, method, options, wants):
    config = config_from_dict(small_config(tmp_path / "r", federation={"method": {"name": method, **options}}))
    assert config.federation.method.wants_previous is wants
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path).federation.method == config.federation.method  # config.toml records the rule


def two_rounds(tmp_path, rule: str):
    """Round 1: clients of ranks 2 and 8; round 2: the rank-2 client alone (sample_count = 1
    would pick it by chance; here it is picked on purpose). Returns the setup and the state after
    each round."""
    data = small_config(
        tmp_path / rule,
        run={"rounds": 2},
        federation={"num_clients": 2, "method": {"name": "raflora", "empty_partition": rule}},
        ranks={"policy": "explicit", "ranks": [2, 8], "r_max": 8},
    )
    setup = build_setup(config_from_dict(data))
    state = FederationState(starts=setup.fresh_starts(), head=setup.model.get_head(None))
    run_round(setup, state, 1, {})
    after_1 = {m: dense64(f.B, f.A) for m, f in state.delta.items()}
    setup.sample_clients = lambda round_: [0]  # the rank-2 client
    record = run_round(setup, state, 2, {})
    assert record["clients"] == [0] and record["accepted"] == 1
    return setup, after_1, state


def dense64(B, A):
    # The product in float64: a float32 product's rounding would count as rank in float64.
    return B.to(F64) @ A.to(F64)


def best_rank(delta, r):
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def test_keep_preserves_the_higher_directions_and_drop_loses_them(tmp_path):
    setup, before, kept = two_rounds(tmp_path, "keep")
    _, before_d, dropped = two_rounds(tmp_path, "drop")
    for m in before:
        assert torch.equal(before[m], before_d[m])  # round 1 is the same under both rules
        keep_m, drop_m = kept.delta[m], dropped.delta[m]
        after_keep, after_drop = dense64(keep_m.B, keep_m.A), dense64(drop_m.B, drop_m.A)
        # drop: the global update is the rank-2 client's alone; keep: plus directions 3..8 of round 1.
        assert torch.linalg.matrix_rank(after_drop) == 2
        tail = best_rank(before[m], 8) - best_rank(before[m], 2)
        diff = after_keep - after_drop
        assert float(torch.linalg.norm(diff - tail)) <= 1e-4 * float(torch.linalg.norm(tail))
        # The rank-8 client's next start: 8 directions with keep, 2 (and seeded padding) with drop.
        s8 = setup.scales[8]
        start_keep, start_drop = kept.starts[8][m], dropped.starts[8][m]
        assert torch.linalg.matrix_rank(dense64(start_keep.B, start_keep.A)) == 8
        assert torch.linalg.matrix_rank(dense64(start_drop.B, start_drop.A)) == 2
        assert s8 == start_keep.scale


def test_a_poisoned_client_is_refused_by_the_norm_bound_and_the_round_goes_on(tmp_path, monkeypatch):
    import dataclasses

    from raflora.federation import round as round_module
    from raflora.lora import ClientUpdate, LoRAFactors

    honest = round_module.run_client

    def poisoned(setup, state, round_, client, kept, on_step=None):
        turn = honest(setup, state, round_, client, kept, on_step)
        if client != 1:
            return turn
        factors = {m: LoRAFactors(A=f.A, B=f.B * 1e6, scale=f.scale) for m, f in turn.update.factors.items()}
        return dataclasses.replace(turn, update=ClientUpdate(client, factors, turn.update.num_examples))

    monkeypatch.setattr(round_module, "run_client", poisoned)
    metrics = run_federation(config_from_dict(small_config(tmp_path / "bounded")))
    for m in metrics:
        assert m["accepted"] == 3 and [r["client"] for r in m["rejected"]] == [1]
        assert "times the round's median" in m["rejected"][0]["reason"]
    unbounded = run_federation(config_from_dict(small_config(tmp_path / "off", federation={"max_norm_ratio": 0})))
    assert all(m["accepted"] == 4 and m["rejected"] == [] for m in unbounded)
