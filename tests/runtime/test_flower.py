"""The Flower runtime: the same numbers as the embedded runtime, refused updates, a missing extra."""

from __future__ import annotations

import importlib.util

import pytest

from raflora.cli import main

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
