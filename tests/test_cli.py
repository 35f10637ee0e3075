"""The command line: run, resume, export, --help, and exit code 2 with one line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

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
    assert (
        main(
            [
                "run",
                str(config_file),
                "--out",
                str(out),
                "--method",
                "flexlora",
                "--rounds",
                "3",
                "--stop-after",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert f"continue with: raflora run --resume {out}" in capsys.readouterr().out
    assert (
        main(["run", str(config_file), "--method", "flexlora", "--rounds", "3", "--resume", str(out), "--quiet"]) == 0
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3] and {r["method"] for r in records} == {"flexlora"}


def test_set_overrides_any_value(config_file, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(config_file),
                "--out",
                str(out),
                "--quiet",
                "--set",
                "run.rounds=1",
                "--set",
                "ranks.ranks=[4]",
                "--set",
                "federation.method=flexlora",
                "--set",
                "federation.transport_dtype=bfloat16",
            ]
        )
        == 0
    )
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
    assert done.stderr.strip() == (
        "error: unknown key run.roundz; [run] takes: device, keep_checkpoints, name, out, "
        "rounds, runtime, seed, threads"
    )


def test_resume_needs_only_the_run_folder(config_file, tmp_path, capsys):
    # the method was overridden on the command line: the printed hint, followed literally, resumes
    out = tmp_path / "run"
    assert (
        main(["run", str(config_file), "--out", str(out), "--method", "flexlora", "--stop-after", "1", "--quiet"]) == 0
    )
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == f"stopped after round 1; continue with: raflora run --resume {out}"
    assert main(hint.split("raflora ", 1)[1].split() + ["--quiet"]) == 0
    assert f"resuming {out} after round 1" in capsys.readouterr().out
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and {r["method"] for r in records} == {"flexlora"}


def test_resume_with_a_config_that_differs_is_refused(config_file, tmp_path, capsys):
    # a config given as well as --resume is checked against the run's own
    out = tmp_path / "run"
    assert (
        main(["run", str(config_file), "--out", str(out), "--method", "flexlora", "--stop-after", "1", "--quiet"]) == 0
    )
    capsys.readouterr()
    assert main(["run", str(config_file), "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume" in err and "federation.method" in err


def test_run_without_config_or_resume(tmp_path, capsys):
    assert main(["run"]) == 2
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: give a config file, or --resume DIR to continue the run in DIR",
        f"error: cannot resume: {str(tmp_path)!r} holds no config.toml of a run",
    ]


def test_version_and_python_m(capsys):
    from importlib import metadata

    import raflora

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith(f"raflora {raflora.__version__} (torch ")
    assert f"peft {metadata.version('peft')}" in line
    ran = subprocess.run([sys.executable, "-m", "raflora", "--version"], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout == line


def test_simulate_methods_comma_or_space_separated(capsys):
    assert main(["simulate", "--methods", "flexlora,raflora", "--rounds", "1"]) == 0
    comma = capsys.readouterr().out
    assert main(["simulate", "--methods", "flexlora", "raflora", "--rounds", "1"]) == 0
    assert capsys.readouterr().out == comma
    assert "ranks [2, 4, 4, 8, 8, 16, 16, 16], 1 round\n" in comma  # not "1 rounds"
    assert comma.splitlines()[2].split() == ["round", "flexlora", "raflora"]
    assert main(["simulate", "--methods", "flexlora,fedsa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'fedsa' cannot be simulated" in err


def test_log_file_and_level(config_file, tmp_path, capsys):
    out, log = tmp_path / "run", tmp_path / "run.log"
    assert (
        main(["run", str(config_file), "--out", str(out), "--quiet", "--log-file", str(log), "--log-level", "debug"])
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    logged = log.read_text().splitlines()
    rounds = [line for line in printed if line.startswith("round ")]
    assert len(rounds) == 2
    for line in rounds:  # the per-round lines, with time and level in front
        assert any(entry.endswith(" INFO " + line) for entry in logged)
    assert any(" DEBUG device cpu" in entry for entry in logged)
    # WARNING: the run is silent; an error still reaches the console (stderr) and the file
    assert (
        main(["run", str(config_file), "--out", str(out), "--quiet", "--log-level", "WARNING", "--log-file", str(log)])
        == 2
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and "already holds a run" in captured.err
    assert log.read_text().splitlines()[-1].endswith(" ERROR " + captured.err.strip())
    assert main(["simulate", "--rounds", "1", "--log-level", "WARNING"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["simulate", "--log-file", str(tmp_path / "no" / "such" / "folder.log")]) == 2
    assert "--log-file" in capsys.readouterr().err


def test_report_writes_its_own_folder_and_never_over_a_report(config_file, tmp_path, capsys):
    runs = []
    for method in ("flexlora", "raflora"):
        runs.append(tmp_path / method)
        assert (
            main(["run", str(config_file), "--out", str(runs[-1]), "--method", method, "--rounds", "1", "--quiet"]) == 0
        )
    capsys.readouterr()
    assert main(["report", str(runs[0])]) == 0
    assert (runs[0] / "report" / "report.json").is_file()
    assert main(["report", *map(str, runs)]) == 0
    both = tmp_path / "report-flexlora+raflora"
    assert json.loads((both / "report.json").read_text())["runs"][1]["method"] == "raflora"
    capsys.readouterr()
    assert main(["report", *map(str, runs)]) == 2  # never silently over the report already there
    assert "already holds a report; pass --overwrite" in capsys.readouterr().err
    (both / "mine.png").write_bytes(b"a user's file")  # raflora did not write it: --overwrite keeps it
    assert main(["report", *map(str, runs), "--overwrite"]) == 0
    assert (both / "mine.png").read_bytes() == b"a user's file" and (both / "report.json").is_file()
    assert main(["report", str(runs[0]), "--out", str(runs[1])]) == 2  # a folder that is no report
    assert "holds no report" in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_one_line_before_anything(config_file, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--set", 'run.device="cuda:1"']) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1  # not even the start line
    assert captured.err.startswith("error: run.device = 'cuda:1' but torch sees no CUDA GPU here")
    assert not out.exists()
    assert main(["run", str(config_file), "--out", str(out), "--set", 'train.precision="fp16"']) == 2
    assert "train.precision = 'fp16' is not known; choose one of float32, bf16" in capsys.readouterr().err


SYNTHETIC = Path(__file__).resolve().parents[1] / "configs" / "synthetic.toml"


def test_carryover_always_carries_and_a_federation_rule_for_it_is_refused(tmp_path, capsys):
    """Issue 19: ``--method carryover --set federation.empty_partition="drop"`` ran exactly flexlora.
    Now the key is refused before work (exit 2, one line naming the key and the method), and
    carryover's numbers on configs/synthetic.toml are those it had before the change (loss and
    accuracy of main at b8d025c, 2 rounds), which differ from flexlora's from round 2 on."""
    args = ["run", str(SYNTHETIC), "--quiet", "--rounds", "2", "--method", "carryover", "--out"]
    assert main([*args, str(tmp_path / "refused"), "--set", 'federation.empty_partition="drop"']) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "federation.empty_partition does not apply to method carryover" in err
    assert not (tmp_path / "refused").exists()
    runs = {}
    for method in ("carryover", "flexlora"):
        assert main([*args[:-2], method, "--out", str(tmp_path / method)]) == 0
        records = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        runs[method] = [(r["accuracy"], r["loss"]) for r in records]
    assert runs["carryover"] == [(0.685, 0.8907667541503906), (0.87, 0.46553104400634765)]
    assert runs["flexlora"][0] == runs["carryover"][0] and runs["flexlora"][1] != runs["carryover"][1]


@pytest.mark.parametrize("method, rule", [("raflora", "keep"), ("carryover", "keep")])
def test_a_run_folder_with_the_old_empty_partition_key_resumes_as_it_ran(tmp_path, capsys, method, rule):
    """A run folder written while ``federation.empty_partition`` was a federation key resumes with
    the rule it ran (one notice line) and ends with the numbers of a run that was never cut."""
    args = ["run", str(SYNTHETIC), "--quiet", "--rounds", "3", "--set", "federation.sample_fraction=0.25"]
    options = ["--set", f'federation.method.empty_partition="{rule}"'] if method == "raflora" else []
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--method", method, *options, "--out", str(whole)]) == 0
    assert main([*args, "--method", method, *options, "--out", str(cut), "--stop-after", "1"]) == 0
    saved = tomllib.loads((cut / "config.toml").read_text())
    saved["federation"]["empty_partition"] = rule  # as the version before the move wrote it
    saved["federation"]["method"].pop("empty_partition", None)
    (cut / "config.toml").write_text(tomli_w.dumps(saved))
    capsys.readouterr()
    assert main(["run", "--resume", str(cut), "--quiet"]) == 0
    notices = [x for x in capsys.readouterr().out.splitlines() if "empty_partition" in x]
    assert len(notices) == 1 and "federation.empty_partition is now raflora's option" in notices[0]

    def numbers(folder):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (folder / "metrics.jsonl").open()]

    assert numbers(cut) == numbers(whole) and len(numbers(cut)) == 3
