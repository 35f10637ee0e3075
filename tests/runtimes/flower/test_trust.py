"""What a node cannot do to a Flower run, through the real ServerApp/ClientApp code and a
tampering node (:mod:`.local_grid`): take another node's client id, switch the federation's kind
of nodes, send a client id that is not a string, change the factor dtype or its rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from safetensors.torch import load_file  # noqa: E402

from raflora.config import ConfigError  # noqa: E402
from raflora.config_io import config_from_dict, config_to_toml  # noqa: E402
from raflora.federation.state import STATE_TENSORS  # noqa: E402
from raflora.runtimes.folder import prepare_folder  # noqa: E402

from ..conftest import small_config, without_time  # noqa: E402
from .conftest import node  # noqa: E402
from .declared_data import config_data  # noqa: E402
from .local_grid import LocalGrid  # noqa: E402


def trained_by(grid) -> set[int]:
    return {m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "train"}


def test_a_second_node_declaring_a_client_id_is_refused_while_the_first_is_connected(tmp_path, files, serve_declared):
    impostor = {**node("chen", 4, files), "client-id": "ana"}
    # the stand-in grid answers the last-pushed node first: ana (7013) declares before the impostor (7000)
    nodes = [impostor, node("ana", 2, files), node("ben", 4, files), node("chen", 8, files)]
    metrics, lines, grid = serve_declared(config_data(tmp_path / "run", files["server"]), nodes)
    refusal = "node 7000 ('ana') refused: client id 'ana' is played by node 7013, which is still connected"
    assert lines.count(refusal) == 3  # at the start, then asked again before each round (its old id may go)
    assert [m["ranks"] for m in metrics] == [[2, 4, 8], [2, 4, 8]] and all(m["accepted"] == 3 for m in metrics)
    assert 7000 not in trained_by(grid)
    assert json.loads((tmp_path / "run" / "flower_nodes.json").read_text()) == {"ana": 7013, "ben": 7026, "chen": 7039}


def test_with_node_auth_a_client_id_stays_with_its_node_across_a_resume(tmp_path, files, serve_declared):
    from raflora.runtimes.flower.client_app import app
    from raflora.runtimes.flower.server_app import serve

    nodes = [node("ana", 2, files), node("ben", 4, files), node("chen", 8, files)]
    data = config_data(tmp_path / "whole", files["server"])
    data["run"]["rounds"] = 2
    whole, _, _ = serve_declared(data, nodes, node_auth=True)
    cut = {**data, "run": {**data["run"], "out": str(tmp_path / "cut")}}
    serve_declared(cut, nodes, stop_after=1, node_auth=True)
    assert json.loads((tmp_path / "cut" / "flower_nodes.json").read_text()) == {"ana": 7000, "ben": 7013, "chen": 7026}
    # the server restarts; a new node (7039) declares 'ana' and answers first: refused, ana keeps her client
    impostor = {**node("ben", 4, files), "client-id": "ana"}
    grid = LocalGrid(app, 0, node_configs=[*nodes, impostor], run_config={})
    lines: list[str] = []
    resumed = serve(
        grid,
        config_from_dict(cut),
        resume=True,
        wait_s=5.0,
        log=lines.append,
        declared=True,
        node_auth=True,
        check_folder=lambda final: prepare_folder(final, Path(final.out), True, False),
    )
    assert (
        "node 7039 ('ana') refused: client id 'ana' belongs to node 7000 (with node authentication, a client id "
        "stays with the node that first declared it)"
    ) in lines
    assert without_time(resumed) == without_time(whole) and 7039 not in trained_by(grid)
    # without node authentication a node that comes back under a new id gets its client (test_roster)


def test_the_kind_of_nodes_is_the_servers_not_the_first_answer(tmp_path, files, serve_declared):
    from raflora.runtimes.flower.run_config import declared_nodes

    # the partition-id node answers first (pushed last); the declared nodes are not refused for it
    nodes = [node("ana", 2, files), node("ben", 4, files), node("chen", 8, files), {"partition-id": 0}]
    metrics, lines, _ = serve_declared(config_data(tmp_path / "run", files["server"]), nodes)
    assert (
        "node 7039 ('partition-0') refused: the nodes of this federation declare rank and data-file "
        "(the server's run config: nodes = 'declared')"
    ) in lines
    assert [m["ranks"] for m in metrics] == [[2, 4, 8], [2, 4, 8]]
    user_text = config_from_dict(config_data(tmp_path / "x", files["server"]))
    synthetic = config_from_dict(small_config(tmp_path / "y"))
    assert declared_nodes({}, user_text) and not declared_nodes({}, synthetic)
    assert not declared_nodes({"nodes": "partition-id"}, user_text) and declared_nodes({"nodes": "declared"}, synthetic)
    with pytest.raises(ConfigError, match="run config key nodes must be one of declared, partition-id, got 'both'"):
        declared_nodes({"nodes": "both"}, user_text)


@pytest.mark.parametrize("client_id", [3.5, "", "  "])
def test_a_client_id_that_is_not_a_non_empty_string_is_refused(tmp_path, files, serve_declared, client_id):
    class Forging(LocalGrid):  # node 7000 answers the QUERY with a forged client id
        def push_messages(self, messages):
            ids = super().push_messages(messages)
            for msg, i in zip(messages, ids):
                if msg.metadata.message_type == "query" and msg.metadata.dst_node_id == 7000:
                    self.replies[i].content["node"]["client-id"] = client_id
            return ids

    from raflora.runtimes.flower.client_app import app
    from raflora.runtimes.flower.roster import Roster

    lines: list[str] = []
    roster = Roster(config_from_dict(config_data(tmp_path / "run", files["server"])), say=lines.append, declared=True)
    grid = Forging(app, 0, node_configs=[node("ana", 2, files), node("ben", 4, files)], run_config={})
    roster.wait(grid, 1, wait_s=5.0)
    assert lines[0] == f"node 7000 refused: client-id must be a non-empty string, got {client_id!r}"
    assert roster.names() == ["ben"]


# -- replies: the server's dtype and rank ------------------------------------------------------


def serve_synthetic(tmp_path, name: str, tamper):
    from raflora.runtimes.flower.client_app import build_client_app
    from raflora.runtimes.flower.server_app import serve

    config = config_from_dict(small_config(tmp_path / name))
    prepare_folder(config, Path(config.out), False, False)
    return serve(LocalGrid(build_client_app(config_to_toml(config)), 4, tamper), config)


def rewire(reply, change):
    """``reply`` with its factors decoded, changed by ``change(factors, meta)`` and encoded again."""
    from safetensors.torch import load, save

    up = reply.content["up"]
    tensors = load(bytes(up["wire"]))
    meta = json.loads(up["wire"][8 : 8 + int.from_bytes(up["wire"][:8], "little")])["__metadata__"]
    tensors, meta = change(tensors, meta)
    up["wire"] = save(tensors, metadata=meta)
    return reply


@pytest.fixture
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


def test_a_reply_cannot_change_the_factor_dtype(tmp_path, task_identity):
    def tamper(client, msg, reply):
        if client == 0:  # says float64
            reply.content["up"]["factor-dtype"] = "float64"
        if client == 1:  # sends float64 tensors: read as the server's float32, nothing changes
            rewire(reply, lambda t, meta: ({k: v.to(torch.float64) for k, v in t.items()}, meta))
        return reply

    metrics = serve_synthetic(tmp_path, "flower", tamper)
    for m in metrics:
        assert [r["client"] for r in m["rejected"]] == [0]
        assert m["rejected"][0]["reason"] == "client 0: factor dtype 'float64' is not the server's 'float32'"
    state = load_file(next((tmp_path / "flower" / "checkpoints").glob(f"round_*/{STATE_TENSORS}")))
    assert state and all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())

    def refuse_client_0(client, msg, reply):
        if client == 0:
            reply.content["up"]["factor-dtype"] = "float64"
        return reply

    plain = serve_synthetic(tmp_path, "plain", refuse_client_0)
    for m in metrics:
        del m["bytes_up"]  # client 1's float64 upload is twice as long; everything else is the same
    assert without_time(metrics) == without_time([{k: v for k, v in m.items() if k != "bytes_up"} for m in plain])


def test_a_reply_with_another_rank_or_module_is_refused(tmp_path, task_identity):
    def tamper(client, msg, reply):
        if client == 0:  # claims rank 8 (the server assigned 2)
            rewire(reply, lambda t, meta: (t, {k: ("8" if k.endswith(".rank") else v) for k, v in meta.items()}))
        if client == 1:  # a module the server never sent
            rewire(
                reply,
                lambda t, meta: (
                    {**t, "extra.lora_A": torch.zeros(2, 2)},
                    {**meta, "extra.scale": "1.0", "extra.rank": "2"},
                ),
            )
        return reply

    first = serve_synthetic(tmp_path, "run", tamper)[0]
    reasons = {r["client"]: r["reason"] for r in first["rejected"]}
    assert reasons[0].startswith("client 0: module ") and reasons[0].endswith(": rank 8, this client's rank is 2")
    assert reasons[1] == "client 1: module 'extra' was not sent to this client"
    assert first["accepted"] == 2


# -- replies: the server's count, the model's head ---------------------------------------------


def test_a_reply_claiming_more_examples_is_refused(tmp_path, task_identity):
    def tamper(client, msg, reply):
        if client == 0:
            reply.content["metrics"]["num-examples"] = 10**12 - 1
        return reply

    metrics = serve_synthetic(tmp_path, "run", tamper)
    for m in metrics:
        assert [r["client"] for r in m["rejected"]] == [0] and m["accepted"] == 3
        reason = m["rejected"][0]["reason"]
        assert reason.startswith("client 0: says 999999999999 examples, the server knows ") and reason[-1].isdigit()


def change_head(reply, change):
    from raflora.runtimes.flower.records import record_tensors, tensors_record

    head = record_tensors(reply.content["head"])
    head["head.bias"] = change(head["head.bias"])
    reply.content["head"] = tensors_record(head)
    return reply


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda b: b + torch.tensor([1e4, 0, 0, 0]), "head change"),
        (lambda b: torch.full_like(b, float("nan")), "head contains NaN or Inf"),
        (lambda b: b.to(torch.complex64), "is not a number type of this machine"),
        (lambda b: b.to(torch.int32), "has the wrong shape or dtype"),
    ],
)
def test_a_head_that_is_not_the_models_refuses_the_whole_reply(tmp_path, task_identity, change, why):
    def tamper(client, msg, reply):
        return change_head(reply, change) if client == 1 else reply

    def refuse_client_1(client, msg, reply):
        if client == 1:
            reply.content["up"]["factor-dtype"] = "float64"
        return reply

    metrics = serve_synthetic(tmp_path, "run", tamper)
    plain = serve_synthetic(tmp_path, "plain", refuse_client_1)
    for m in metrics:
        assert [r["client"] for r in m["rejected"]] == [1] and why in m["rejected"][0]["reason"]
    # the same global model as when client 1's reply is refused for another reason: its factors are out too
    # (bytes_up: a reply refused when it is read made no turn, so its upload is not counted)
    for m in metrics + plain:
        m["rejected"] = [r["client"] for r in m["rejected"]]
        del m["bytes_up"]
    assert without_time(metrics) == without_time(plain)
    state = load_file(next((tmp_path / "run" / "checkpoints").glob(f"round_*/{STATE_TENSORS}")))
    assert all(t.dtype == torch.float32 for k, t in state.items() if k.startswith("head/"))


def test_a_declared_count_is_checked_once_and_its_weight_capped(tmp_path, files, serve_declared, monkeypatch):
    from raflora.aggregation.raflora import RaFLoRA

    weights = []
    aggregate = RaFLoRA.aggregate

    def spy(self, updates, **kwargs):
        result = aggregate(self, updates, **kwargs)
        weights.append(dict(result.weights))
        return result

    monkeypatch.setattr(RaFLoRA, "aggregate", spy)

    def claiming(grid):  # ana (node 7000) says 10**12 - 1 examples when she joins and in every reply
        push = grid.push_messages

        def push_messages(messages):
            ids = push(messages)
            for msg, i in zip(messages, ids):
                if msg.metadata.dst_node_id == 7000 and i in grid.replies:
                    content = grid.replies[i].content
                    if msg.metadata.message_type == "query":
                        content["node"]["examples"] = 10**12 - 1
                    elif msg.metadata.message_type == "train":
                        content["metrics"]["num-examples"] = 10**12 - 1
            return ids

        grid.push_messages = push_messages

    nodes = [node("ana", 2, files), node("ben", 4, files), node("chen", 8, files)]
    metrics, lines, _ = serve_declared(config_data(tmp_path / "run", files["server"]), nodes, grid_hook=claiming)
    assert "client 0: 'ana', rank 2, 999999999999 examples, node 7000" in lines
    assert all(m["accepted"] == 3 for m in metrics) and len(weights) == 2
    for w in weights:
        assert w[0] == 0.5  # federation.max_client_weight: FedAvg would give 0.99999999997
        assert w[1] + w[2] == pytest.approx(0.5)


def test_a_declared_count_of_10_12_is_refused_when_the_node_joins(tmp_path, files, task_identity):
    from raflora.runtimes.flower.client_app import app
    from raflora.runtimes.flower.roster import Roster

    class Claiming(LocalGrid):
        def push_messages(self, messages):
            ids = super().push_messages(messages)
            for msg, i in zip(messages, ids):
                if msg.metadata.message_type == "query" and msg.metadata.dst_node_id == 7000:
                    self.replies[i].content["node"]["examples"] = 10**12
            return ids

    lines: list[str] = []
    roster = Roster(config_from_dict(config_data(tmp_path / "run", files["server"])), say=lines.append, declared=True)
    grid = Claiming(app, 0, node_configs=[node("ana", 2, files), node("ben", 4, files)], run_config={})
    roster.wait(grid, 1, wait_s=5.0)
    assert lines[0] == "node 7000 ('ana') refused: examples must be a positive integer below 10**12, got 1000000000000"
    assert roster.names() == ["ben"]
