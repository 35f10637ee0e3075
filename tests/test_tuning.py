"""compare --tuned: each method at the sweep point it does best at on validation, never on test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raflora.cli import main
from raflora.config import ConfigError
from raflora.tuning import choose


def _run(folder: Path, method: str, lr: float, val: float, test: float, val_loss: float = 1.0) -> None:
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(
        f'[run]\nseed = 0\n[federation]\nmethod = "{method}"\n[train]\nlr = {lr}\n'
        '[ranks]\npolicy = "cycle"\nranks = [2, 4]\n[task]\nname = "synthetic"\n'
    )
    record = {"round": 1, "accuracy": test, "loss": 0.5, "val_accuracy": val, "val_loss": val_loss}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def _sweep(root: Path, table: dict) -> Path:
    """``table``: point label -> lr and per method a list of (val, test) per seed."""
    points, cells = [], []
    for label, (lr, by_method) in table.items():
        points.append({"label": label, "settings": {"train.lr": lr}})
        for method, seeds in by_method.items():
            runs = []
            for seed, scores in enumerate(seeds):
                _run(root / label / method / f"seed-{seed}", method, lr, *scores)
                runs.append(f"{label}/{method}/seed-{seed}")
            cells.append({"point": label, "method": method, "runs": runs, "same_as": None})
    methods = sorted({m for _, by in table.values() for m in by})
    (root / "sweep.json").write_text(json.dumps({"points": points, "methods": methods, "cells": cells}))
    return root


def test_the_choice_reads_validation_means_and_ignores_the_test_split(tmp_path):
    sweep = _sweep(
        tmp_path,
        {
            # flexlora: point-1 is better on validation (mean 0.80 vs 0.75), point-2 on test
            "point-1": (0.01, {"flexlora": [(0.9, 0.1), (0.7, 0.1)], "raflora": [(0.6, 0.9), (0.6, 0.9)]}),
            "point-2": (0.001, {"flexlora": [(0.8, 0.99), (0.7, 0.99)], "raflora": [(0.7, 0.1), (0.7, 0.1)]}),
        },
    )
    choices = choose(sweep, ["flexlora", "raflora"])
    assert choices["flexlora"]["settings"] == {"train.lr": 0.01} and choices["flexlora"]["point"] == "point-1"
    assert choices["raflora"]["settings"] == {"train.lr": 0.001}
    assert choices["flexlora"]["validation"] == pytest.approx({"point-1": 0.8, "point-2": 0.75})


def test_a_tie_goes_to_the_lower_validation_loss(tmp_path):
    sweep = _sweep(
        tmp_path,
        {"point-1": (0.01, {"flexlora": [(0.8, 0.5, 0.9)]}), "point-2": (0.1, {"flexlora": [(0.8, 0.5, 0.4)]})},
    )
    assert choose(sweep, ["flexlora"])["flexlora"]["point"] == "point-2"


def test_runs_without_validation_numbers_are_refused(tmp_path):
    sweep = _sweep(tmp_path, {"point-1": (0.01, {"flexlora": [(0.8, 0.5)]})})
    path = tmp_path / "point-1" / "flexlora" / "seed-0" / "metrics.jsonl"
    path.write_text(json.dumps({"round": 1, "accuracy": 0.5, "loss": 0.5}) + "\n")
    with pytest.raises(ConfigError, match="no validation numbers.*eval.validation"):
        choose(sweep, ["flexlora"])
    with pytest.raises(ConfigError, match="did not run 'raflora'"):
        choose(_sweep(tmp_path / "other", {"point-1": (0.01, {"flexlora": [(0.8, 0.5)]})}), ["raflora"])
    with pytest.raises(ConfigError, match="not a sweep folder"):
        choose(tmp_path / "nowhere", ["flexlora"])


def test_compare_runs_each_method_at_its_choice_and_pairs_across_it(tmp_path, capsys):
    common = ["--seeds", "0,1", "--rounds", "2", "--set", "eval.validation=0.2", "--set", "run.threads=1", "--quiet"]
    grid = ["--grid", "train.lr=0.02,0.002"]
    assert (
        main(
            [
                "sweep",
                "configs/synthetic.toml",
                "--methods",
                "flexlora,raflora",
                *grid,
                *common,
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    choices = choose(tmp_path / "s", ["flexlora", "raflora"])
    assert (
        main(
            [
                "compare",
                "configs/synthetic.toml",
                "--methods",
                "flexlora,raflora",
                "--tuned",
                str(tmp_path / "s"),
                *common,
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "c" / "tuned.json").read_text()) == json.loads(json.dumps(choices))
    for method in ("flexlora", "raflora"):
        config = (tmp_path / "c" / method / "seed-0" / "config.toml").read_text()
        assert f"lr = {choices[method]['settings']['train.lr']}" in config
    report = json.loads((tmp_path / "c" / "report" / "report.json").read_text())
    assert [p["other"] for p in report["paired"]] == ["raflora"]  # paired although their lr may differ
    assert "chosen on validation" in (tmp_path / "c" / "report" / "report.md").read_text()
