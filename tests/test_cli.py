"""The command line: run, resume, export, --help, and exit code 2 with one line for bad input."""

from __future__ import annotations

import json
import tomllib
import subprocess
import sys

import pytest

from raflora.cli import build_parser, main

CONFIG = """
[run]
name = "cli"
rounds = 2
threads = 1
[federation]
num_clients = 4
[ranks]
ranks = [2, 4]
r_max = 4
[train]
local_steps = 2
[task]
name = "synthetic"
train_size = 120
test_size = 40
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    return path


def test_run_then_export(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "round 2/2  accuracy" in printed and f"global adapter in {out}/adapter" in printed
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    assert "[federation]" in (out / "config.toml").read_text()
    assert main(["export", str(out), str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "adapter_model.safetensors").is_file()
    assert main(["export", str(out), "--merged", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_overrides_stop_and_resume(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--method", "flexlora", "--rounds", "3",
                 "--stop-after", "1", "--quiet"]) == 0
    assert f"continue with: raflora run --resume {out}" in capsys.readouterr().out
    assert main(["run", str(config_file), "--method", "flexlora", "--rounds", "3", "--resume", str(out), "--quiet"]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3] and {r["method"] for r in records} == {"flexlora"}


def test_set_overrides_any_value(config_file, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--quiet", "--set", "run.rounds=1",
                 "--set", "ranks.ranks=[4]", "--set", "federation.method=flexlora",
                 "--set", "federation.transport_dtype=bfloat16"]) == 0
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["ranks"]["ranks"] == [4] and config["federation"]["method"] == {"name": "flexlora"}
    assert config["federation"]["transport_dtype"] == "bfloat16"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1] and records[0]["ranks"] == [4, 4, 4, 4]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "fedavg"], "federation.method = 'fedavg' is not known"),
        (["--set", "lr=0.1"], "expected SECTION.KEY=VALUE"),
        (["--set", "train.lrr=0.1"], "lrr"),
        (["--set", "train.lr=fast"], "train.lr"),
        (["--resume", "/nonexistent/run"], "holds no checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line(config_file, capsys, args, message):
    assert main(["run", str(config_file), "--quiet", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_missing_config_and_export_of_nothing(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "no checkpoint" in err[1]


def test_help_of_every_command(capsys):
    parser = build_parser()
    for command in ("run", "export", "demo", "simulate"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command, "--help"])
        assert done.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_console_entry_point_exit_code(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nroundz = 1\n")
    done = subprocess.run([sys.executable, "-m", "raflora.cli", "run", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown key run.roundz; [run] takes: keep_checkpoints, name, out, rounds, runtime, seed, threads"
