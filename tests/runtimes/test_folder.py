"""The run folder: --overwrite replaces the old run only once the new one has a checkpoint (a new
run that fails or is killed before that gives it back), a folder killed before round 1 is no run
yet, and a finished run in which no round was aggregated says so and exits with code 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from raflora.cli import main
from raflora.config import ConfigError
from raflora.config_io import config_from_dict, config_to_toml
from raflora.runtimes import embedded
from raflora.runtimes.embedded import run_federation
from raflora.runtimes.folder import REPLACED, open_run, prepare_folder

from .conftest import read_metrics, small_config


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tmp_path):
    """A finished 1-round run in tmp_path/run and the bytes of its files."""
    config = config_from_dict(small_config(tmp_path / "run", run={"rounds": 1}))
    run_federation(config)
    return tmp_path / "run", snapshot(tmp_path / "run")


def test_a_new_run_with_bad_data_leaves_the_old_run_as_it_was(tmp_path, old_run):
    folder, before = old_run
    data = tmp_path / "train.csv"
    data.write_text("text,label\n")  # a header without rows: refused while the run is set up
    bad = small_config(folder, task={"name": "user_text", "train_file": str(data), "test_file": str(data)})
    bad["task"] = {"name": "user_text", "train_file": str(data), "test_file": str(data)}
    with pytest.raises(ConfigError):
        run_federation(config_from_dict(bad), overwrite=True)
    assert snapshot(folder) == before


def test_a_new_run_that_fails_in_round_1_gives_the_old_run_back(tmp_path, old_run, monkeypatch):
    folder, before = old_run

    def fail(*args, **kwargs):
        assert (folder / REPLACED / "metrics.jsonl").is_file(), "the old run is aside while the new one runs"
        raise RuntimeError("out of memory")

    monkeypatch.setattr(embedded, "run_round", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_federation(config_from_dict(small_config(folder, run={"rounds": 2})), overwrite=True)
    assert snapshot(folder) == before


def test_a_replacement_killed_before_its_first_checkpoint_is_undone_at_the_next_start(tmp_path, old_run):
    folder, before = old_run
    config = config_from_dict(small_config(folder, run={"rounds": 2, "seed": 9}))
    prepare_folder(config, folder, resume=False, overwrite=True)
    open_run(config, False, lambda line: None)  # set up, old run aside, new config.toml written: killed here
    assert (folder / REPLACED).is_dir() and snapshot(folder) != before
    with pytest.raises(ConfigError, match="already holds a run"):
        run_federation(config)  # the old run is back, so this needs --overwrite again
    assert snapshot(folder) == before
    # --resume continues the old run, not the killed one.
    old = config_from_dict(small_config(folder, run={"rounds": 2}))
    assert [m["round"] for m in run_federation(old, resume=True)] == [1, 2]


def test_the_old_run_is_deleted_once_the_new_one_has_a_checkpoint(tmp_path, old_run):
    folder, before = old_run
    seen = []

    def log(line):  # a round's line comes right after its checkpoint
        if line.startswith("round "):
            seen.append((line.split()[1], (folder / REPLACED).exists()))

    config = config_from_dict(small_config(folder, run={"rounds": 2, "seed": 9}))
    run_federation(config, overwrite=True, log=log)
    assert seen == [("1/2", False), ("2/2", False)]
    assert not (folder / REPLACED).exists()
    assert [m["round"] for m in read_metrics(folder)] == [1, 2]
    assert snapshot(folder)["metrics.jsonl"] != before["metrics.jsonl"]


def test_a_run_killed_before_round_1_is_no_run_yet(tmp_path):
    folder = tmp_path / "run"
    config = config_from_dict(small_config(folder, run={"rounds": 1}))
    prepare_folder(config, folder, resume=False, overwrite=False)
    open_run(config, False, lambda line: None)  # config.toml and an empty metrics.jsonl: killed here
    assert (folder / "config.toml").is_file() and (folder / "metrics.jsonl").read_text() == ""
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        prepare_folder(config, folder, resume=True, overwrite=False)  # nothing to resume either
    assert [m["round"] for m in run_federation(config)] == [1]  # no --overwrite needed


@pytest.mark.parametrize("case", ["every client diverges", "every client drops out"])
def test_a_run_with_no_aggregated_round_says_so_and_exits_3(tmp_path, capsys, case):
    sections = {"run": {"rounds": 2}, "train": {"local_steps": 1}}
    if case == "every client diverges":
        sections.update(partition={"scheme": "iid"}, task={"nan_examples": 160})  # every example NaN
    else:
        sections.update(federation={"num_clients": 2, "sample_count": 1, "dropout": 0.5})
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "run", **sections))))
    assert main(["run", str(path), "--quiet"]) == 3
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done: no round was aggregated in 2 rounds") and "no adapter" in last
    assert not (tmp_path / "run" / "adapter").exists()
    assert all(m["accepted"] == 0 for m in read_metrics(tmp_path / "run"))


def test_a_run_with_an_aggregated_round_exits_0(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "run", run={"rounds": 1}))))
    assert main(["run", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("done: accuracy")
