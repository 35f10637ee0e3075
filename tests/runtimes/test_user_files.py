"""No command deletes or overwrites a file raflora did not write: each command that writes is run
against a folder of a user's files, which must come out byte for byte as they went in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raflora.cli import main
from raflora.config_io import config_from_dict, config_to_toml
from raflora.federation.export_folder import RECORD

from .conftest import read_metrics, small_config


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(folder: Path, *names: str) -> dict[str, bytes]:
    """``folder`` holding a user's files (a CSV and a config by default), and their bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or ("data.csv", "config.toml"):
        (folder / name).write_bytes(f"{name}: the user's own bytes\n".encode())
    return snapshot(folder)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "unused", run={"rounds": 1}))))
    return path


@pytest.fixture
def finished_run(tmp_path, config_file, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_export_refuses_a_folder_of_user_files_and_writes_beside_them_with_overwrite(tmp_path, finished_run, capsys):
    out = tmp_path / "mine"
    before = user_folder(out)
    assert main(["export", str(finished_run), str(out)]) == 2
    assert "holds files raflora did not write (config.toml, data.csv)" in error_line(capsys)
    assert snapshot(out) == before
    assert main(["export", str(finished_run), str(out), "--overwrite"]) == 0
    assert {name: snapshot(out)[name] for name in before} == before  # the user's files, untouched
    written = json.loads((out / RECORD).read_text())["files"]
    assert "adapter_model.safetensors" in written and "data.csv" not in written
    assert (out / "adapter_model.safetensors").is_file()


def test_export_never_replaces_a_user_file_of_an_export_name(tmp_path, finished_run, capsys):
    out = tmp_path / "mine"
    before = user_folder(out, "README.md")
    assert main(["export", str(finished_run), str(out), "--overwrite"]) == 2
    assert "README.md' was not written by raflora" in error_line(capsys)
    assert snapshot(out) == before  # and nothing of the export was left behind


def test_export_replaces_only_the_files_of_the_earlier_export(tmp_path, finished_run, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(finished_run), str(out)]) == 0
    assert main(["export", str(finished_run), str(out)]) == 2  # an earlier export needs --overwrite
    assert "already holds an export; pass --overwrite" in error_line(capsys)
    record = json.loads((out / RECORD).read_text())
    (out / "old_shard.safetensors").write_bytes(b"written by the earlier export")
    record["files"].append("old_shard.safetensors")
    (out / RECORD).write_text(json.dumps(record))
    mine = user_folder(out, "notes.txt")
    assert main(["export", str(finished_run), str(out), "--overwrite"]) == 0
    assert not (out / "old_shard.safetensors").exists()  # the earlier export's file that is not written again
    assert (out / "notes.txt").read_bytes() == mine["notes.txt"]
    assert "notes.txt" not in json.loads((out / RECORD).read_text())["files"]


@pytest.mark.parametrize("inside", ["", "checkpoints", "adapter", "checkpoints/round_0001", "config.toml"])
def test_export_into_the_run_itself_is_refused(finished_run, capsys, inside):
    before = snapshot(finished_run)
    target = finished_run / inside if inside else finished_run
    for extra in ([], ["--overwrite"], ["--merged"]):
        assert main(["export", str(finished_run), str(target), *extra]) == 2
        line = error_line(capsys)
        assert "is the run folder itself" in line or "inside the run's own" in line
    assert snapshot(finished_run) == before


def test_merged_export_refuses_user_files_too(tmp_path, finished_run, capsys):
    out = tmp_path / "merged"
    before = user_folder(out, "model.safetensors")
    assert main(["export", str(finished_run), "--merged", str(out)]) == 2
    assert "holds files raflora did not write (model.safetensors)" in error_line(capsys)
    assert main(["export", str(finished_run), "--merged", str(out), "--overwrite"]) == 2
    assert "model.safetensors' was not written by raflora" in error_line(capsys)
    assert snapshot(out) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_run_never_overwrites_a_config_it_did_not_write(tmp_path, config_file, capsys, overwrite):
    out = tmp_path / "mine"
    before = user_folder(out)
    assert main(["run", str(config_file), "--out", str(out), "--quiet", *overwrite]) == 2
    assert "holds config.toml but no metrics.jsonl, so no raflora run wrote it" in error_line(capsys)
    assert snapshot(out) == before


def test_run_writes_beside_user_files_of_other_names(tmp_path, config_file, capsys):
    out = tmp_path / "mine"
    before = user_folder(out, "data.csv", "notes.md")
    assert main(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    assert {name: snapshot(out)[name] for name in before} == before
    assert main(["run", str(config_file), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert {name: snapshot(out)[name] for name in before} == before


def test_a_user_file_in_the_run_adapter_survives_a_resumed_run(tmp_path, config_file, finished_run, capsys):
    (finished_run / "adapter" / "my_eval.json").write_text("{}")
    assert main(["run", "--resume", str(finished_run), "--rounds", "2", "--quiet"]) == 0
    assert (finished_run / "adapter" / "my_eval.json").read_text() == "{}"
    assert [m["round"] for m in read_metrics(finished_run)] == [1, 2]


@pytest.mark.parametrize("name", ["adapter", "checkpoints", "metrics.jsonl", "checkpoints/round_0001"])
def test_a_symlink_in_a_run_folder_is_refused(tmp_path, config_file, finished_run, capsys, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = finished_run / name
    link.rename(tmp_path / "moved")
    (tmp_path / "moved").rename(outside / "target")
    link.symlink_to(outside / "target", target_is_directory=(outside / "target").is_dir())
    before = snapshot(outside)
    assert main(["run", "--resume", str(finished_run), "--rounds", "2", "--quiet"]) == 2
    assert "is a symbolic link" in error_line(capsys)
    assert main(["run", str(config_file), "--out", str(finished_run), "--quiet", "--overwrite"]) == 2
    assert "is a symbolic link" in error_line(capsys)
    assert snapshot(outside) == before


def test_report_refuses_a_folder_of_user_files(tmp_path, finished_run, capsys):
    out = tmp_path / "mine"
    before = user_folder(out)
    for extra in ([], ["--overwrite"]):
        assert main(["report", str(finished_run), "--out", str(out), *extra]) == 2
        assert "holds no report" in error_line(capsys)
    assert snapshot(out) == before


def test_compare_refuses_a_user_config_where_a_run_goes(tmp_path, config_file, capsys):
    out = tmp_path / "cmp"
    before = user_folder(out / "flexlora")
    args = ["compare", str(config_file), "--methods", "raflora,flexlora", "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "no raflora run wrote it" in error_line(capsys)
    assert snapshot(out / "flexlora") == before
    assert not (out / "raflora").exists()  # refused before the first run
