"""The Flower runtime: the same numbers as the embedded runtime, refused replies, a missing extra.

One test starts Flower's real simulation engine (Ray, ~10 s to start); the others drive the same
ServerApp code (:func:`serve`, :class:`RafloraStrategy`) and ClientApp in this process through a
stand-in Grid that hands each message to the ClientApp, so a reply can also be broken on purpose.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from raflora.cli import main
from raflora.config_io import config_from_dict, config_to_toml, load_config
from raflora.runtimes.embedded import run_federation
from raflora.runtimes.folder import prepare_folder
from runtimes.flower.local_grid import LocalGrid

from .conftest import read_metrics, small_config, without_time

SYNTHETIC = Path(__file__).resolve().parents[2] / "configs" / "synthetic.toml"

CONFIG = """
[run]
name = "flower-cli"
rounds = 1
threads = 1
[federation]
num_clients = 2
[ranks]
ranks = [2, 4]
r_max = 4
[train]
local_steps = 1
[task]
name = "synthetic"
train_size = 40
test_size = 16
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    return path


def test_unknown_runtime_is_one_line_exit_2(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--runtime", "ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: run.runtime = 'ray' is not known; choose one of embedded, flower"]
    assert not out.exists()


def test_missing_flower_extra_is_one_line_exit_2(config_file, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--runtime", "flower", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install the flower extra: pip install .[flower]" in err[0]
    assert not out.exists()


def _same_outputs(a: Path, b: Path) -> None:
    assert without_time(read_metrics(a)) == without_time(read_metrics(b))
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert (a / adapter).is_file() == (b / adapter).is_file()  # none for fedsa: no global model
    if (b / adapter).is_file():
        assert (a / adapter).read_bytes() == (b / adapter).read_bytes()
    [ca], [cb] = sorted((a / "checkpoints").glob("round_*"))[-1:], sorted((b / "checkpoints").glob("round_*"))[-1:]
    ta, tb = load_file(str(ca / "state.safetensors")), load_file(str(cb / "state.safetensors"))
    assert ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)


# -- in-process: the ServerApp and ClientApp code without Ray ------------------------------------


@pytest.fixture
def flower_in_process(monkeypatch):
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)
    from raflora.runtimes.flower.client_app import build_client_app
    from raflora.runtimes.flower.server_app import serve

    def run(config, tamper=None, resume=False):
        prepare_folder(config, Path(config.out), resume, False)
        grid = LocalGrid(build_client_app(config_to_toml(config)), config.federation.num_clients, tamper)
        return serve(grid, config, resume=resume)

    return run


@pytest.mark.parametrize(
    "method, dtype", [("raflora", "float32"), ("flora", "float32"), ("fedsa", "bfloat16"), ("ffa", "float16")]
)
def test_strategy_and_client_app_give_the_embedded_numbers(tmp_path, flower_in_process, method, dtype):
    # flora merges into the base (the client gets it), fedsa/ffa keep a factor off the wire
    sections = {"federation": {"method": method, "transport_dtype": dtype}}
    flower = flower_in_process(config_from_dict(small_config(tmp_path / "flower", **sections)))
    embedded = run_federation(config_from_dict(small_config(tmp_path / "embedded", **sections)))
    assert without_time(flower) == without_time(embedded)
    _same_outputs(tmp_path / "flower", tmp_path / "embedded")


@pytest.mark.parametrize("method", ["raflora", "fedsa"])
def test_a_validation_split_gives_the_embedded_numbers_under_flower(tmp_path, flower_in_process, method):
    # fedsa: the clients score their own models on the split the server names in the request
    sections = {"federation": {"method": method}, "eval": {"validation": 0.2}}
    flower = flower_in_process(config_from_dict(small_config(tmp_path / "flower", **sections)))
    embedded = run_federation(config_from_dict(small_config(tmp_path / "embedded", **sections)))
    assert without_time(flower) == without_time(embedded)
    assert [r["accuracy"] is None for r in flower] == [True, False] and flower[0]["val_accuracy"] is not None


def test_flower_resumes_an_embedded_run(tmp_path, flower_in_process):
    sections = {"run": {"rounds": 3}, "federation": {"method": "flora"}}
    run_federation(config_from_dict(small_config(tmp_path / "cut", **sections)), stop_after=1)
    again = small_config(tmp_path / "cut", run={"rounds": 3, "runtime": "flower"}, federation={"method": "flora"})
    resumed = flower_in_process(config_from_dict(again), resume=True)
    whole = run_federation(config_from_dict(small_config(tmp_path / "whole", **sections)))
    assert [m["round"] for m in resumed] == [1, 2, 3]
    assert without_time(resumed) == without_time(whole)
    _same_outputs(tmp_path / "cut", tmp_path / "whole")


def test_nan_client_is_refused_and_the_round_goes_on(tmp_path, flower_in_process):
    sections = {"partition": {"scheme": "by_key"}, "task": {"nan_examples": 8, "num_keys": 3}}
    flower = flower_in_process(config_from_dict(small_config(tmp_path / "flower", **sections)))
    embedded = run_federation(config_from_dict(small_config(tmp_path / "embedded", **sections)))
    assert without_time(flower) == without_time(embedded)
    for m in flower:
        assert len(m["diverged"]) == 1 and m["accepted"] == 3
        assert [r["client"] for r in m["rejected"]] == m["diverged"] and "NaN" in m["rejected"][0]["reason"]


def test_broken_and_failed_replies_are_refused_and_the_round_goes_on(tmp_path, flower_in_process):
    from flwr.app import ConfigRecord, Error

    def tamper(client, msg, reply):
        if client == 0:  # unreadable factors
            reply.content["up"] = ConfigRecord({"wire": b"not safetensors", "factor-dtype": "float32"})
        if client == 2:  # the ClientApp raised
            return msg.create_error_reply(Error(code=0, reason="out of memory"))
        return reply

    metrics = flower_in_process(config_from_dict(small_config(tmp_path / "run")), tamper)
    for m in metrics:
        assert m["accepted"] == 2 and m["diverged"] == []
        assert [r["client"] for r in m["rejected"]] == [0, 2]
        assert "unreadable reply" in m["rejected"][0]["reason"] and "out of memory" in m["rejected"][1]["reason"]
        assert m["accuracy"] is not None and m["rho_rmin"] is not None
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_flwr_run_entry_points_read_the_run_config(tmp_path, flower_in_process):
    from flwr.app import Context, RecordDict

    from raflora.runtimes.flower import client_app, server_app

    path = tmp_path / "run.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "ignored"))))
    run_config = {"config": str(path), "out": str(tmp_path / "flwr"), "resume": False, "overwrite": False}
    grid = LocalGrid(client_app.app, 4, run_config={"config": str(path), "out": ""})
    server_app.app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    run_federation(config_from_dict(small_config(tmp_path / "embedded")))
    _same_outputs(tmp_path / "flwr", tmp_path / "embedded")
    assert load_config(tmp_path / "flwr" / "config.toml").run.runtime == "flower"
    assert not (tmp_path / "ignored").exists()


# -- Flower's simulation engine (Ray) ------------------------------------------------------------


def test_flower_simulation_of_the_synthetic_config_equals_embedded(tmp_path, capsys):
    pytest.importorskip("flwr")
    flower_out, embedded_out = tmp_path / "flower", tmp_path / "embedded"
    rounds = ["--rounds", "2", "--quiet"]
    assert main(["run", str(SYNTHETIC), "--out", str(flower_out), "--runtime", "flower", *rounds]) == 0
    assert "round 2/2  accuracy" in capsys.readouterr().out
    assert main(["run", str(SYNTHETIC), "--out", str(embedded_out), *rounds]) == 0
    _same_outputs(flower_out, embedded_out)
    saved = load_config(flower_out / "config.toml")
    assert saved.run.runtime == "flower" and len(read_metrics(flower_out)) == 2
    assert json.loads((flower_out / "adapter" / "adapter_config.json").read_text())["r"] == saved.ranks.r_max
