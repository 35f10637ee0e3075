"""scripts/results.py builds docs/results.md's tables from a results folder: a tiny fake one here
(two methods x two seeds of a 2-round synthetic run, numbers chosen so the means are known)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import ROOT, load_script

CONFIG = """
[run]
name = "fake"
seed = {seed}
rounds = 2
[federation]
num_clients = 4
[federation.method]
name = "{method}"
[ranks]
policy = "cycle"
ranks = [2, 4]
r_max = 4
[task]
name = "synthetic"
"""

# final accuracy per (method, seed): raflora - flexlora is +0.10 on seed 0 and +0.20 on seed 1
ACCURACY = {("raflora", 0): 0.70, ("raflora", 1): 0.80, ("flexlora", 0): 0.60, ("flexlora", 1): 0.60}
RHO = {"raflora": 0.6, "flexlora": 0.9}
LOSS = {("raflora", 0): 0.5, ("raflora", 1): 0.75, ("flexlora", 0): 0.5, ("flexlora", 1): 0.5}


def _write_run(folder: Path, method: str, seed: int) -> None:
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(CONFIG.format(seed=seed, method=method))
    lines = []
    for round_ in (1, 2):
        rho = RHO[method]
        lines.append(
            json.dumps(
                {
                    "round": round_,
                    "method": method,
                    "rho_rmin": rho,
                    "energy_by_partition": {"1-2": rho, "3-4": 1 - rho},
                    "train_loss": 1.0,
                    "bytes_up": 1000,
                    "bytes_down": 3000,
                    "seconds": 1.0,
                    "accuracy": ACCURACY[(method, seed)] if round_ == 2 else None,
                    "loss": LOSS[(method, seed)] if round_ == 2 else None,
                }
            )
        )
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results" / "exp-fake"
    for method in ("raflora", "flexlora"):
        for seed in (0, 1):
            _write_run(folder / method / f"seed-{seed}", method, seed)
    (folder / "run.json").write_text(
        json.dumps(
            {
                "experiment": "exp-fake",
                "parts": [
                    {
                        "part": "",
                        "command": "raflora compare fake.toml --seeds 0,1",
                        "commit": "0123456789abcdef",
                        "dirty": False,
                        "wall_seconds": 90.0,
                    }
                ],
            }
        )
    )
    (folder / "about.toml").write_text(
        'title = "Fake experiment"\nconfig = "fake.toml"\nreduced = "nothing"\nreference = "raflora"\n'
        'tables = ["groups", "paired", "loss", "rho_rounds"]\nheatmap = "fake_heatmap.png"\n'
        'conclusion = "raflora wins on both seeds."\n'
        '[[contrast]]\na = "raflora"\nb = "flexlora"\nlabel = "raflora - flexlora"\n'
        '[[contrast]]\na = "raflora"\nb = "flexlora"\nlabel = "loss: raflora - flexlora"\nfield = "final_loss"\n'
    )
    return tmp_path


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tables_come_from_the_metrics(results):
    out, img = results / "docs" / "results.md", results / "docs" / "img"
    out.parent.mkdir()
    text = load_script("results").build(results / "results", out, img)
    assert out.read_text() == text
    assert "## Fake experiment" in text and "raflora compare fake.toml --seeds 0,1" in text
    assert "`0123456789`" in text and "1.5 min" in text and "**Conclusion.** raflora wins" in text
    raflora = _row(text, "| raflora | raflora |")
    assert raflora[2] == "0,1"
    assert raflora[3] == "0.7500 ± 0.0707 [0.7000, 0.8000]"  # mean, sample std, range of 0.70 and 0.80
    assert raflora[5].startswith("0.600")
    assert raflora[6] == "3.0 kB"  # 6000 bytes down over 2 rounds
    flexlora = _row(text, "| flexlora | flexlora |")
    assert flexlora[3] == "0.6000 ± 0.0000 [0.6000, 0.6000]"
    paired = _row(text, "| raflora - flexlora | 2 | +0.1500")
    assert "0: +0.1000, 1: +0.2000" in paired
    contrast = text.split("| difference |")[1]
    assert _row(contrast, "| raflora - flexlora |")[2:] == [
        "final accuracy",
        # mean, its 95 % interval: 0.15 ± t(0.975, 1) 12.706 * 0.0707 / sqrt(2); exact Wilcoxon p of 2 seeds
        "+0.1500 [-0.4853, +0.7853] p 0.50 level",
        "0: +0.1000, 1: +0.2000",
    ]
    assert _row(contrast, "| loss: raflora - flexlora |")[2:] == [
        "final test loss",
        "+0.1250 [-1.4633, +1.7133] p 1.00 level",  # the zero difference is dropped from the ranks
        "0: +0.0000, 1: +0.2500",
    ]
    assert _row(text, "| raflora | raflora | 0,1 | 0.6250")[3] == "0.6250 ± 0.1768 [0.5000, 0.7500]"  # the loss table
    loss_pairs = text.split("Paired differences of the test loss")[1]
    assert _row(loss_pairs, "| raflora - flexlora |")[2:] == [
        "+0.1250 [-1.4633, +1.7133] p 1.00 level",  # the zero difference is dropped from the ranks
        "0: +0.0000, 1: +0.2500",
    ]
    columns = _row(text, "| round | ")[1:]
    assert dict(zip(columns, _row(text, "| 2 | ")[1:])) == {"raflora": "0.600", "flexlora": "0.900"}
    glance = text.split("## At a glance")[1].split("## Fake experiment")[0]
    # the fake configs have no empty_partition: read as the code before the key, which dropped
    assert _row(glance, "| Fake |") == [
        "Fake",
        "raflora",
        "drop",
        "flexlora",
        "+0.1500 [-0.4853, +0.7853] p 0.50 level",
        "2 / 0 / 0",
        "+0.1500 [-0.4853, +0.7853] p 0.50 level",
        "2 / 0 / 0",
    ]
    assert (img / "fake_heatmap.png").stat().st_size > 1000
    assert "](img/fake_heatmap.png)" in text


def test_the_committed_results_page_is_what_the_script_builds_from_the_committed_results(tmp_path):
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    text = load_script("results").build(ROOT / "results", out, out.parent / "img")
    committed = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert text == committed, "docs/results.md is stale: run python scripts/results.py and commit it"


def test_a_tuned_comparison_reports_its_parts_choices_and_curves(tmp_path):
    # a tuning sweep (left out by about.toml's runs) and a comparison at each method's own lr
    folder = tmp_path / "results" / "exp-tuned"
    for method, lr in (("raflora", 0.008), ("flexlora", 0.02)):
        for seed in (0, 1):
            run = folder / "compare" / method / f"seed-{seed}"
            _write_run(run, method, seed)
            config = (run / "config.toml").read_text().replace("[task]", f"[train]\nlr = {lr}\n[task]")
            (run / "config.toml").write_text(config)
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for record in records:
                record["val_accuracy"] = 0.5 + 0.1 * record["round"] + (0.05 if method == "raflora" else 0.0)
                record["val_loss"] = 1.0
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        _write_run(folder / "tune" / "point-1" / method / "seed-100", method, 0)  # must not be reported
    choices = {
        "raflora": {
            "settings": {"train.lr": 0.008},
            "point": "point-2",
            "sweep": "tune",
            "validation": {"point-1": 0.61, "point-2": 0.66},
        },
        "flexlora": {
            "settings": {"train.lr": 0.02},
            "point": "point-1",
            "sweep": "tune",
            "validation": {"point-1": 0.64, "point-2": 0.6},
        },
    }
    (folder / "compare" / "tuned.json").write_text(json.dumps(choices))
    (folder / "run.json").write_text(json.dumps({"experiment": "exp-tuned", "parts": []}))
    (folder / "about.toml").write_text(
        'title = "Tuned"\nreference = "raflora"\nruns = ["compare"]\n'
        'tables = ["tuning", "groups", "paired", "val_rounds"]\n'
        'validation_plot = "tuned_val.png"\nbytes_plot = "tuned_bytes.png"\n'
    )
    out, img = tmp_path / "docs" / "results.md", tmp_path / "docs" / "img"
    out.parent.mkdir()
    text = load_script("results").build(tmp_path / "results", out, img).split("## Tuned")[1]
    assert _row(text, "| raflora | train.lr = 0.008 |")[2:] == ["0.6100", "0.6600 *"]
    assert _row(text, "| flexlora | train.lr = 0.02 |")[2:] == ["0.6400 *", "0.6000"]
    assert "seed-100" not in text and "| raflora | raflora | 0,1 |" in text  # the sweep's runs are left out
    assert _row(text, "| raflora - flexlora | 2 | +0.1500")  # paired although their lr differ
    assert "best val accuracy" in text
    columns = _row(text, "| round | ")[1:]
    assert dict(zip(columns, _row(text, "| 2 | ")[1:])) == {"raflora": "0.7500", "flexlora": "0.7000"}
    for name in ("tuned_val.png", "tuned_bytes.png"):
        assert (img / name).stat().st_size > 1000 and f"](img/{name})" in text
