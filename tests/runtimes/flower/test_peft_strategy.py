"""LoRAStrategy in the example app (examples/peft_flower_app): its ServerApp and ClientApp code run
in this process (LocalGrid), 2 rounds, 3 PEFT nodes of ranks 2, 4 and 8."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch

from raflora.aggregation import aggregate, method_named
from raflora.peft_io import update_from_peft
from raflora.runtimes.flower.peft_strategy import LoRAStrategy

from .local_grid import LocalGrid

pytest.importorskip("peft")
EXAMPLE = Path(__file__).parents[3] / "examples" / "peft_flower_app"
RANKS = {0: 2, 1: 4, 2: 8}  # the grid's nodes in node id order get the example's ranks 2, 4, 8
COUNTS = {0: 40, 1: 60, 2: 80}  # client_app.node_data's sizes
HUGE = 10**12 - 1


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"peft_flower_app_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load("server_app"), _load("client_app")


@pytest.fixture
def run(example, monkeypatch):
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)
    server, client = example
    defaults = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    def go(method: str, tamper=None):
        replies: dict[int, dict[int, object]] = {}

        def record(index, msg, reply):
            reply = tamper(index, msg, reply) if tamper else reply
            replies.setdefault(int(msg.content["config"]["server-round"]), {})[index] = reply
            return reply

        config = {**defaults, "method": method}
        grid = LocalGrid(client.app, 3, tamper=record, run_config=config)
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
        strategy, result = server.serve(grid, context)
        nodes = {i: n for n, i in grid.clients.items()}
        return strategy, result, replies, nodes

    return go


def _reference(method: str, replies: dict, nodes: dict, strategy: LoRAStrategy, **kwargs):
    """``aggregate`` of the replies as a library user would call it."""
    updates = [
        update_from_peft(reply.content["arrays"].to_torch_state_dict(), nodes[i], COUNTS[i], scale=16.0 / RANKS[i])
        for i, reply in sorted(replies.items())
    ]
    bound = method_named(method).bind(sorted(RANKS.values()), len(updates))
    return aggregate(bound, updates, max_weight=0.5, max_norm_ratio=10.0, **kwargs), updates


@pytest.mark.parametrize("method", ["raflora", "flexlora"])
def test_the_strategy_aggregates_as_aggregate_does(run, method):
    strategy, result, replies, nodes = run(method)
    assert sorted(replies) == [1, 2] and strategy.rejected == {1: [], 2: []}
    assert strategy.assigned == {nodes[i]: r for i, r in RANKS.items()}
    want, updates = _reference(method, replies[2], nodes, strategy, modules=strategy.result.modules)
    assert strategy.result.weights == want.weights
    assert strategy.result.modules == ("fc1", "fc2")
    for m in want.modules:
        assert torch.equal(strategy.result.delta(m), want.delta(m))
        assert torch.equal(strategy.result.singular_values(m), want.singular_values(m))
    if method == "flexlora":  # its global update is sum_i p_i s_i B_i A_i: against dense float64
        total = sum(COUNTS.values())
        for m in want.modules:
            dense = sum(
                COUNTS[i] / total * u.factors[m].scale * (u.factors[m].B.double() @ u.factors[m].A.double())
                for i, u in enumerate(updates)
            )
            assert torch.allclose(strategy.result.delta(m).double(), dense, rtol=1e-5, atol=1e-6)
    # Flower's history has the round's diagnostics; the returned arrays are the rank-8 start
    assert result.train_metrics_clientapp[2]["accepted"] == 3
    assert 0 < result.train_metrics_clientapp[2]["rho_rmin"] <= 1
    assert tuple(result.arrays["base_model.model.fc1.lora_A.weight"].shape) == (8, 16)
    assert result.evaluate_metrics_clientapp[2]["accuracy"] >= 0


def test_round_two_sends_each_node_the_start_of_its_rank(run):
    sent = []
    strategy, _, _, nodes = run("raflora", tamper=lambda i, msg, reply: sent.append((i, msg)) or reply)
    for i, msg in sent:
        arrays = msg.content["arrays"]
        if msg.content["config"]["server-round"] == 1:
            assert len(arrays) == 0
            continue
        assert msg.content["config"]["rank"] == RANKS[i]
        A = arrays["base_model.model.fc2.lora_A.weight"].numpy()
        B = arrays["base_model.model.fc2.lora_B.weight"].numpy()
        assert A.shape == (RANKS[i], 32) and B.shape == (4, RANKS[i])


def _grown(reply, rank: int):
    """``reply`` with its factors padded with zeros to ``rank``."""
    from flwr.app import ArrayRecord

    state = reply.content["arrays"].to_torch_state_dict()
    for key, t in state.items():
        pad = rank - (t.shape[0] if "lora_A" in key else t.shape[1])
        state[key] = (
            torch.cat([t, torch.zeros((pad, t.shape[1]))])
            if "lora_A" in key
            else torch.cat([t, torch.zeros((t.shape[0], pad))], dim=1)
        )
    reply.content["arrays"] = ArrayRecord(state)
    return reply


def test_a_reply_of_another_rank_is_refused_and_the_round_goes_on(run):
    def tamper(i, msg, reply):
        return _grown(reply, 4) if i == 0 and msg.content["config"]["server-round"] == 2 else reply

    strategy, result, replies, nodes = run("raflora", tamper=tamper)
    [(node, module, reason)] = strategy.rejected[2]
    assert node == nodes[0] and reason == f"node {nodes[0]}: module 'fc1': rank 4, this node's rank is 2"
    assert set(strategy.result.weights) == {nodes[1], nodes[2]}
    honest = {i: r for i, r in replies[2].items() if i != 0}
    want, _ = _reference("raflora", honest, nodes, strategy, modules=strategy.result.modules)
    for m in want.modules:
        assert torch.equal(strategy.result.delta(m), want.delta(m))
    assert result.train_metrics_clientapp[2]["rejected"] == 1


def test_a_claimed_count_is_refused_and_a_first_claim_is_capped(run):
    def tamper(i, msg, reply):
        if i == 2:
            reply.content["metrics"]["num-examples"] = HUGE
        return reply

    strategy, _, _, nodes = run("flexlora", tamper=tamper)
    # round 1: the first count a node says is the one the server keeps, and no share is over 0.5
    assert strategy.counts[nodes[2]] == HUGE
    assert strategy.result.weights[nodes[2]] == 0.5
    assert strategy.result.weights[nodes[0]] == pytest.approx(0.5 * 40 / 100, abs=1e-15)

    def later(i, msg, reply):
        if i == 2 and msg.content["config"]["server-round"] == 2:
            reply.content["metrics"]["num-examples"] = HUGE
        return reply

    strategy, _, _, nodes = run("flexlora", tamper=later)
    [(node, _, reason)] = strategy.rejected[2]
    assert reason == f"node {nodes[2]}: says {HUGE} examples, the server knows 80"
    # the two left cannot both fit under the cap of 0.5 (2 x 0.5 <= 1): equal shares, as aggregate's
    assert strategy.result.weights == {nodes[0]: 0.5, nodes[1]: 0.5}


def test_bad_arguments_fail_before_any_round():
    with pytest.raises(ValueError, match="flora: a node needs more than its adapter"):
        LoRAStrategy("flora", [2], lora_alpha=16)
    with pytest.raises(ValueError, match="max_weight"):
        LoRAStrategy("raflora", [2], lora_alpha=16, max_weight=0)
    with pytest.raises(ValueError, match="counts: node 3"):
        LoRAStrategy("raflora", [2], lora_alpha=16, counts={3: 10**12})
    with pytest.raises(ValueError, match="unknown aggregation method"):
        LoRAStrategy("fedavg", [2], lora_alpha=16)
