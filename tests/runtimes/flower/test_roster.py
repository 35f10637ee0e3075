"""Nodes that declare their own client id, rank and data file, driven in this process through a
stand-in Grid (:mod:`.local_grid`): who becomes which client, what is refused, late and restarted
nodes, replies matched by message id, Flower's reasons, the round timeout, a round nobody answers."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from raflora.config import ConfigError  # noqa: E402
from raflora.config_io import config_from_dict  # noqa: E402
from raflora.runtimes.folder import prepare_folder  # noqa: E402

from .conftest import node  # noqa: E402
from .declared_data import config_data  # noqa: E402
from .local_grid import LocalGrid  # noqa: E402


def test_nodes_declare_rank_and_data_and_are_numbered_by_client_id(tmp_path, files, serve_declared):
    out = tmp_path / "run"
    nodes = [node("chen", 8, files), node("ana", 2, files), node("ben", 4, files)]
    metrics, lines, _ = serve_declared(config_data(out, files["server"]), nodes)
    assert "client 0: 'ana', rank 2, 10 examples, node 7013" in lines
    assert "client 2: 'chen', rank 8, 10 examples, node 7000" in lines
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["ranks"]["ranks"] == [2, 4, 8] and saved["federation"]["num_clients"] == 3
    assert [m["ranks"] for m in metrics] == [[2, 4, 8], [2, 4, 8]]
    assert all(m["accepted"] == 3 and m["rejected"] == [] and m["accuracy"] is not None for m in metrics)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # uploads: A (r x 16) and B (16 x r) of the tiny encoder's query and value, per rank, in float32
    assert metrics[0]["bytes_up"] > 0 and metrics[0]["bytes_up"] == metrics[1]["bytes_up"]


def test_bad_declarations_are_refused_with_the_reason(tmp_path, files, serve_declared):
    nodes = [node("ana", 2, files), node("ben", 16, files), {"client-id": "dan", "rank": 4}, node("chen", 4, files)]
    data = config_data(tmp_path / "run", files["server"], method="fedit")
    metrics, lines, _ = serve_declared(data, nodes, nodes=1)
    assert any("('ben') refused: rank 16 is not in 1..ranks.r_max = 8" in line for line in lines)
    assert any(
        line.startswith("node 7026 did not join") and "declare both rank (>= 1) and data-file" in line for line in lines
    )
    # fedit: one rank for all; the first node to answer sets it (here the stand-in grid answers
    # last-pushed first: chen, rank 4)
    assert "node 7000 ('ana') refused: 'fedit' needs one rank for every client, [ranks] gives [2, 4]" in lines
    assert [m["ranks"] for m in metrics] == [[4], [4]]


def test_labels_are_the_servers_when_a_node_lacks_a_class(tmp_path, files, serve_declared):
    # a node holding only positive reviews still numbers "positive" as the server does (1)
    rows = [r for r in csv.DictReader(files["ana"].open()) if r["label"] == "positive"]
    with files["ana"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    from raflora.runtimes.flower.node import Node, build_node_setup

    data = config_data(tmp_path / "run", files["server"])
    own = build_node_setup(data, Node("ana", 2, str(files["ana"])), ["negative", "positive"])
    assert {ex["label"] for ex in own.client_examples(0)} == {1}
    assert own.ranks == [2] and own.config.federation.num_clients == 1 and len(own.shards[0]) == len(rows)
    with pytest.raises(ConfigError, match="holds a single class"):  # its own labels alone: one class
        build_node_setup(data, Node("ana", 2, str(files["ana"])), None)


def test_reasons_of_flower_timeouts_and_a_round_nobody_answers(tmp_path, files, serve_declared):
    from flwr.app import Error, Message

    def tamper(client, msg, reply):
        round_ = int(msg.content["task"]["round"])
        if client == 0:  # the SuperLink answers for a node that is gone
            error = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=msg)
            error.metadata.__dict__["_src_node_id"] = 1
            return error
        if client == 1 or round_ == 2:
            return None  # never answers: the round closes at round_timeout
        return reply

    nodes = [node("ana", 2, files), node("ben", 4, files), node("chen", 8, files)]
    data = config_data(tmp_path / "run", files["server"], round_timeout=2.0)
    metrics, lines, _ = serve_declared(data, nodes, tamper=tamper)
    first, second = metrics
    assert first["accepted"] == 1 and [r["client"] for r in first["rejected"]] == [0, 1]
    assert first["rejected"][0]["reason"] == "client 0: Flower error 5: Error: Node Unavailable"
    assert first["rejected"][1]["reason"] == "client 1: no reply within federation.round_timeout = 2 s"
    assert second["accepted"] == 0 and second["accuracy"] == first["accuracy"]
    assert any(line.startswith("round 2: no client replied, the global model is unchanged") for line in lines)


def test_late_and_restarted_nodes(tmp_path, files, serve_declared):
    from flwr.app import Context, RecordDict

    nodes = [node("ana", 2, files), node("ben", 4, files)]
    data = config_data(tmp_path / "run", files["server"])
    data["run"]["rounds"] = 3

    # after round 1: chen joins with rank 4, dan with a rank the run does not have, and ana restarts
    # under a new node id; the round after, each is where it should be
    def joins(grid):
        calls = {"n": 0}
        real_ids = grid.get_node_ids

        def ids():
            calls["n"] += 1
            if calls["n"] == 3 and 9000 not in grid.contexts:  # the refresh before round 2
                for node_id, cfg in (
                    (9000, node("chen", 4, files)),
                    (9013, {**node("chen", 8, files), "client-id": "dan"}),
                    (9026, node("ana", 2, files)),
                ):
                    grid.contexts[node_id] = Context(
                        run_id=1, node_id=node_id, node_config=cfg, state=RecordDict(), run_config={}
                    )
                    grid.clients[node_id] = len(grid.clients)
                grid.contexts.pop(7000)
                grid.clients.pop(7000)
            return real_ids()

        grid.get_node_ids = ids

    metrics, lines, grid = serve_declared(data, nodes, grid_hook=joins, nodes=2)
    assert [m["clients"] for m in metrics] == [[0, 1], [0, 1, 2], [0, 1, 2]]
    assert [m["ranks"] for m in metrics][1] == [2, 4, 4]
    assert "client 2: 'chen', rank 4, 10 examples, node 9000" in lines
    assert any("('dan') refused: rank 8 is not one of the ranks this run started with [2, 4]" in line for line in lines)
    assert "client 0 ('ana') is back on node 9026 (was node 7000)" in lines
    trained_by = {
        m.metadata.dst_node_id
        for m in grid.sent
        if m.metadata.message_type == "train" and int(m.content["task"]["round"]) == 3
    }
    assert trained_by == {9026, 7013, 9000}


def test_node_config_errors():
    from flwr.app import Context, RecordDict

    from raflora.runtimes.flower.node import node_of

    def ctx(**given):
        return Context(run_id=1, node_id=42, node_config=given, state=RecordDict(), run_config={})

    assert node_of(ctx(**{"partition-id": 3})).client_id == "partition-3"
    assert node_of(ctx(rank=4, **{"data-file": "/x.csv"})).client_id == "node-42"
    with pytest.raises(ConfigError, match="declare rank=R and data-file"):
        node_of(ctx())
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lora-rank'\]"):
        node_of(ctx(**{"lora-rank": 4}))


def test_run_config_common_keys(tmp_path):
    from raflora.runtimes.flower.run_config import config_data as read

    path = tmp_path / "c.toml"
    path.write_text(
        '[run]\nrounds = 3\n[federation]\nsample_count = 2\n[federation.method]\nname = "florist"\n'
        "tau = 0.5\n[train]\nlr = 0.1\n"
    )
    given = {
        "config": str(path),
        "num-server-rounds": 7,
        "method": "flexlora",
        "fraction-train": 0.5,
        "local-steps": 0,
        "lr": 0.0,
    }
    data = read(given)
    assert data["run"]["rounds"] == 7 and data["federation"]["method"] == "flexlora"
    assert data["federation"]["sample_fraction"] == 0.5 and data["federation"]["sample_count"] == 0
    assert data["train"]["lr"] == 0.1 and "local_steps" not in data["train"]
    assert read({"config": str(path)})["federation"]["method"] == {"name": "florist", "tau": 0.5}
    with pytest.raises(ConfigError, match="set the run config key `config`"):
        read({})


def test_a_restarted_server_resumes_a_declared_run(tmp_path, files, serve_declared):
    from raflora.runtimes.flower.server_app import serve

    nodes = [node("ana", 2, files), node("ben", 4, files), node("chen", 8, files)]
    data = config_data(tmp_path / "whole", files["server"])
    data["run"]["rounds"] = 3
    whole, _, _ = serve_declared(data, nodes)
    cut = {**data, "run": {**data["run"], "out": str(tmp_path / "cut")}}
    serve_declared(cut, nodes, stop_after=1)
    # the ServerApp starts again (resume=true); the nodes come back in another order, under new ids
    from raflora.runtimes.flower.client_app import app

    grid = LocalGrid(app, 0, node_configs=list(reversed(nodes)), run_config={})
    config = config_from_dict(cut)
    resumed = serve(
        grid,
        config,
        resume=True,
        wait_s=5.0,
        declared=True,
        check_folder=lambda final: prepare_folder(final, Path(final.out), True, False),
    )
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert [m["round"] for m in resumed] == [1, 2, 3] and strip(resumed) == strip(whole)
    assert (tmp_path / "cut" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "whole" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    # with a node missing, the declared ranks differ from the run's: refused, one line
    with pytest.raises(ConfigError, match=r"cannot resume .* federation.num_clients: 3 in the run, 2 now"):
        serve(
            LocalGrid(app, 0, node_configs=nodes[:2], run_config={}),
            config,
            resume=True,
            wait_s=5.0,
            nodes=2,
            declared=True,
            check_folder=lambda final: prepare_folder(final, Path(final.out), True, False),
        )


def test_simulation_nodes_share_one_built_run_and_declared_nodes_have_their_own(tmp_path, files):
    # a Ray actor serves many simulated clients: rebuilding the run (model, data) per client would
    # cost seconds per message
    from raflora.runtimes.flower.client_app import client_setup
    from raflora.runtimes.flower.node import Node

    data = config_data(tmp_path / "run", files["server"])
    first = client_setup(data, Node("partition-0", partition_id=0))
    assert client_setup(data, Node("partition-2", partition_id=2)) is first
    ana = client_setup(data, Node("ana", 2, str(files["ana"])), ["negative", "positive"])
    assert ana is not first and ana.ranks == [2]
    assert client_setup(data, Node("ana", 2, str(files["ana"])), ["negative", "positive"]) is ana


def test_too_few_nodes_and_unreadable_answers(tmp_path, files, serve_declared):
    from flwr.app import ConfigRecord, RecordDict

    from raflora.runtimes.flower.roster import NodesMissing, Roster

    class OldNodes(LocalGrid):  # nodes that answer the QUERY in a shape this server does not know
        def push_messages(self, messages):
            ids = super().push_messages(messages)
            for i in ids:
                self.replies[i].content = RecordDict({"node": ConfigRecord({"partition-id": 0})})
            return ids

    from raflora.runtimes.flower.client_app import app

    lines: list[str] = []
    roster = Roster(config_from_dict(config_data(tmp_path / "run", files["server"])), say=lines.append)
    with pytest.raises(NodesMissing, match=r"waited 2 s for nodes: no SuperNode with partition-id \[0, 1, 2\]"):
        roster.wait(OldNodes(app, 0, node_configs=[node("ana", 2, files)], run_config={}), 0, wait_s=2.0)
    assert lines[0].startswith("node 7000 did not join: unreadable answer (KeyError")
    with pytest.raises(
        NodesMissing,
        match=r"waited 2 s for nodes: 1 of 2 declared \(ana\); set the run config "
        "key min-nodes to start with fewer",
    ):
        serve_declared(config_data(tmp_path / "run", files["server"]), [node("ana", 2, files)], nodes=2)


def test_a_node_answers_the_query_without_building_a_model(tmp_path, files, monkeypatch):
    from raflora.config_io import config_to_dict
    from raflora.federation.setup import build_setup
    from raflora.runtimes.flower.node import Node, node_identity
    from raflora.tasks import UserTextTask

    data = config_data(tmp_path / "run", files["server"])
    data["ranks"] = {"policy": "cycle", "ranks": [2, 4, 8], "r_max": 8}
    whole = build_setup(config_from_dict(data))  # what a simulated node trains with

    def no_model(self):
        raise AssertionError("a QUERY built the model")

    monkeypatch.setattr(UserTextTask, "load_model", no_model)
    for k in range(3):
        assert node_identity(data, Node(f"partition-{k}", partition_id=k), None) == (
            whole.ranks[k],
            len(whole.shards[k]),
        )
    assert node_identity(data, Node("ana", 4, str(files["ana"])), ["negative", "positive"]) == (4, 10)
    with pytest.raises(ConfigError, match=r"partition-id 3 is not in 0..2 \(federation.num_clients = 3\)"):
        node_identity(config_to_dict(config_from_dict(data)), Node("partition-3", partition_id=3), None)
