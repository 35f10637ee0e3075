"""raflora compare --seeds: every method once per seed into OUT/<method>/seed-<k>/, the same seeds
for every method; the report's mean and spread per group and the paired differences equal the
numbers recomputed here from each metrics.jsonl."""

from __future__ import annotations

import json
import statistics
import tomllib

import pytest

from raflora.cli import main
from raflora.compare import parse_seeds
from raflora.config import ConfigError

from .conftest import SEEDED_METHODS, SEEDS


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _final(records):
    return [r["accuracy"] for r in records if r["accuracy"] is not None][-1]


def test_one_folder_per_method_and_seed(seeded):
    folder, printed = seeded
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SEEDED_METHODS, "report"])
    runs = {}
    for method in SEEDED_METHODS:
        assert sorted(p.name for p in (folder / method).iterdir()) == [f"seed-{s}" for s in SEEDS]
        for seed in SEEDS:
            run = folder / method / f"seed-{seed}"
            config = tomllib.loads((run / "config.toml").read_text())
            assert config["run"]["seed"] == seed and config["federation"]["method"]["name"] == method
            runs[method, seed] = _records(run)
    # the same seed: the same clients and the same first local training for every method (round 1
    # starts from the same initial adapters); another seed: another partition and initialisation
    for seed in SEEDS:
        assert runs["flexlora", seed][0]["clients"] == runs["raflora", seed][0]["clients"]
        assert runs["flexlora", seed][0]["train_loss"] == runs["raflora", seed][0]["train_loss"]
    assert runs["flexlora", 0][0]["train_loss"] != runs["flexlora", 1][0]["train_loss"]
    assert "over seeds: mean ± std [min, max]" in printed and "| flexlora - raflora | 2 |" in printed


def test_groups_and_paired_differences_equal_the_metrics(seeded):
    folder, _ = seeded
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["reference"] == "flexlora"
    finals = {(m, s): _final(_records(folder / m / f"seed-{s}")) for m in SEEDED_METHODS for s in SEEDS}
    assert [g["label"] for g in report["groups"]] == list(SEEDED_METHODS)
    for group in report["groups"]:
        values = [finals[group["method"], s] for s in SEEDS]
        assert group["seeds"] == list(SEEDS) and group["runs"] == [f"{group['method']}/seed-{s}" for s in SEEDS]
        stat = group["final_metric"]
        assert stat["values"] == values and stat["mean"] == pytest.approx(statistics.fmean(values))
        assert stat["std"] == pytest.approx(statistics.stdev(values))
        assert (stat["min"], stat["max"]) == (min(values), max(values))
        rounds = group["per_round"]["accuracy"]
        assert [row["round"] for row in rounds] == [2, 3] and rounds[-1]["mean"] == pytest.approx(stat["mean"])
    (pair,) = report["paired"]
    assert (pair["reference"], pair["other"]) == ("flexlora", "raflora")
    diffs = {str(s): finals["flexlora", s] - finals["raflora", s] for s in SEEDS}
    assert pair["final_metric"]["per_seed"] == pytest.approx(diffs)
    assert pair["final_metric"]["mean"] == pytest.approx(statistics.fmean(diffs.values()))
    text = (folder / "report" / "report.md").read_text()
    assert "## Over seeds" in text and "### Paired differences (reference flexlora)" in text


def test_report_of_a_seeded_folder_with_another_reference(seeded, tmp_path):
    folder, _ = seeded
    assert main(["report", str(folder), "--reference", "raflora", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(p["reference"], p["other"]) for p in report["paired"]] == [("raflora", "flexlora")]
    assert [len(g["runs"]) for g in report["groups"]] == [2, 2]


@pytest.mark.parametrize(
    "text, message",
    [("0,x", "'x' is not a seed"), ("1,1", "lists 1 twice"), (",", "lists no seed"), ("-1", "'-1' is not a seed")],
)
def test_parse_seeds_refuses(text, message):
    assert parse_seeds("2, 0,1") == [2, 0, 1] and parse_seeds(None) is None
    with pytest.raises(ConfigError, match=message):
        parse_seeds(text)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0,a"], "'a' is not a seed"),
        (["--seeds", "0,1", "--set", "run.seed=3"], "use --seeds instead"),
        (["--reference", "zero_pad"], "--reference 'zero_pad' is not one of --methods"),
        (["--reference", "fedavg"], "--reference 'fedavg' is not one of --methods"),
    ],
)
def test_bad_seeds_fail_before_any_run(config_file, tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert (
        main(["compare", str(config_file), "--methods", "raflora,flexlora", "--out", str(out), "--quiet", *args]) == 2
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert not out.exists()


def test_report_reference_must_be_a_method_of_the_runs(seeded, tmp_path, capsys):
    assert main(["report", str(seeded[0]), "--reference", "zero_pad", "--out", str(tmp_path / "out")]) == 2
    assert "--reference 'zero_pad': no run of that method" in capsys.readouterr().err


def test_runs_below_a_folder_in_natural_order(tmp_path):
    from raflora.report.load import expand

    for name in ("raflora/seed-10", "raflora/seed-2", "flexlora/seed-0", "report"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("raflora/seed-10", "raflora/seed-2", "flexlora/seed-0"):
        (tmp_path / name / "metrics.jsonl").write_text("")
        (tmp_path / name / "checkpoints" / "round-1").mkdir(parents=True)  # not searched: inside a run
    assert [str(p.relative_to(tmp_path)) for p in expand([tmp_path])] == [
        "flexlora/seed-0",
        "raflora/seed-2",
        "raflora/seed-10",
    ]
