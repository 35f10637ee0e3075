"""raflora compare: one run per method with everything else equal, the report after, and every
bad input refused with one line (exit 2) before any run starts."""

from __future__ import annotations

import json
import tomllib

import pytest

from raflora.cli import main

from .conftest import METHODS


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_one_run_folder_per_method_with_the_same_clients(comparison):
    folder, printed = comparison
    assert sorted(p.name for p in folder.iterdir()) == sorted([*METHODS, "report"])
    runs = {m: _records(folder / m) for m in METHODS}
    for method, records in runs.items():
        config = tomllib.loads((folder / method / "config.toml").read_text())
        assert config["federation"]["method"]["name"] == method and config["run"]["out"] == str(folder / method)
        assert [r["round"] for r in records] == [1, 2, 3] and {r["method"] for r in records} == {method}
        assert (folder / method / "adapter").is_dir()
    # same seed: the same clients with the same ranks every round, whatever the method
    for k in range(3):
        assert len({(tuple(r[k]["clients"]), tuple(r[k]["ranks"])) for r in runs.values()}) == 1
    for name in ("report.md", "report.json", "rho_rmin.png"):
        assert (folder / "report" / name).is_file()
    for method in METHODS:
        assert f"| {method} | {method} | 3 |" in printed
    assert f"to {folder / 'report'}" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "raflora,fedavg"], "'fedavg' is not a method"),
        (["--methods", "raflora,raflora"], "'raflora' twice"),
        (["--methods", ","], "lists no method"),
        (["--methods", "raflora,fedit"], "method fedit: federation.method 'fedit' needs one rank"),
        (["--set", "federation.method=flora"], "use --methods"),
        (["--set", "train.lrr=1"], "unknown key train.lrr"),
    ],
)
def test_bad_input_fails_before_any_run(config_file, tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert main(["compare", str(config_file), "--out", str(out), "--quiet", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert not out.exists()


def test_missing_config(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "cmp")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_used_folder_needs_overwrite(config_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    (out / "flexlora").mkdir(parents=True)
    (out / "flexlora" / "metrics.jsonl").write_text("")
    assert main(["compare", str(config_file), "--out", str(out), "--methods", "raflora,flexlora", "--quiet"]) == 2
    assert "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert not (out / "raflora").exists()


def test_help_texts(capsys):
    for command in ("compare", "report"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "--methods M1,M2,..." in printed and "RUN_DIR [RUN_DIR ...]" in printed
