"""raflora sweep: the --grid syntax, which keys reach which method (a method option only the
methods that have it; a method a point sets nothing new for is not run again), bad input refused
before any run, and one sweep end to end on configs/synthetic.toml."""

from __future__ import annotations

import json
import tomllib

import pytest

from raflora.cli import main
from raflora.config import ConfigError
from raflora.report.method_keys import is_method_option, method_has_option
from raflora.sweep import parse_grid, plan, settings_for

from .conftest import FAST, SYNTHETIC


def test_one_point_per_grid_or_per_value():
    points = parse_grid(
        [
            "train.lr=0.01,0.001",
            "ranks.policy=groups ranks.ranks=[16, 4, 2] ranks.shares=[0.1,0.4,0.5]",
            "ranks.ranks=[2,4],[4,8]",
            'task.name="synthetic"',
        ]
    )
    assert [p.label for p in points] == [f"point-{k}" for k in range(1, 7)]
    assert [p.settings for p in points] == [
        {"train.lr": 0.01},
        {"train.lr": 0.001},
        {"ranks.policy": "groups", "ranks.ranks": [16, 4, 2], "ranks.shares": [0.1, 0.4, 0.5]},
        {"ranks.ranks": [2, 4]},
        {"ranks.ranks": [4, 8]},
        {"task.name": "synthetic"},
    ]


@pytest.mark.parametrize(
    "grid, message",
    [
        ([], "at least one --grid"),
        (["train.lr"], "expected KEY=VALUE"),
        (["lr=0.1"], "expected KEY=VALUE"),
        (["train.lr="], "expected KEY=VALUE"),
        (["train.lr=0.1 train.lr=0.2"], "sets train.lr twice"),
        (["train.lr=0.1,0.2 ranks.policy=uniform"], "one value per key"),
        (["train.lr=0.1,"], "an empty value"),
        (["train.lr=0.1", "train.lr=0.1"], "twice"),
        (["federation.method=flora"], "use --methods"),
        (["run.seed=1,2"], "use --seeds"),
        (["run.out=x"], "use --out"),
    ],
)
def test_bad_grid_syntax(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(grid)


def test_which_method_has_which_key():
    assert method_has_option("florist", "federation.method.tau") and not method_has_option(
        "flexlora", "federation.method.tau"
    )
    assert method_has_option("florist", "federation.method.tau") and not method_has_option(
        "raflora", "federation.method.tau"
    )
    assert method_has_option("raflora", "federation.method.rank_levels") and not method_has_option(
        "florist", "federation.method.rank_levels"
    )
    # keys that are no method's option reach every method, num_clients too (fedsa reads it, it is no fedsa option)
    for method in ("florist", "flexlora", "fedsa"):
        assert method_has_option(method, "train.lr") and method_has_option(method, "federation.num_clients")
    assert not is_method_option("federation.num_clients") and is_method_option("federation.method.sfed_alpha")
    (point,) = parse_grid(["federation.method.tau=0.8 train.lr=0.02"])
    assert settings_for("florist", point) == {"federation.method.tau": 0.8, "train.lr": 0.02}
    assert settings_for("flora", point) == {"train.lr": 0.02}


def test_plan_runs_a_method_once_per_setting_it_has(tmp_path):
    points = parse_grid(["federation.method.tau=1.0,0.9,0.8"])
    folder, configs, cells = plan(SYNTHETIC, points, ["florist", "flora"], [0, 1], tmp_path / "sw")
    assert folder == tmp_path / "sw"
    assert list(configs) == [f"point-1/{m}/seed-{s}" for m in ("florist", "flora") for s in (0, 1)] + [
        f"point-{p}/florist/seed-{s}" for p in (2, 3) for s in (0, 1)
    ]
    assert [configs[f"point-{p}/florist/seed-0"].federation.method.tau for p in (1, 2, 3)] == [1.0, 0.9, 0.8]
    assert configs["point-1/flora/seed-1"].run.seed == 1
    flora = [c for c in cells if c["method"] == "flora"]
    assert [c["same_as"] for c in flora] == [None, "point-1", "point-1"]
    assert all(c["runs"] == ["point-1/flora/seed-0", "point-1/flora/seed-1"] for c in flora)
    assert not (tmp_path / "sw").exists()  # planning writes nothing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "train.lrr=0.1,0.2"], "point-1 (train.lrr=0.1): method raflora: unknown key train.lrr"),
        (["--grid", "train.lr 0.1"], "expected KEY=VALUE"),
        (["--grid", "federation.method.tau=0.9"], "a method option that none of --methods (raflora, flexlora) has"),
        (["--grid", "ranks.policy=fancy"], "point-1"),
        (["--grid", "train.lr=0.1", "--seeds", "0,0"], "--seeds lists 0 twice"),
        (["--grid", "train.lr=0.1", "--methods", "raflora,fedavg"], "'fedavg' is not a method"),
        (["--grid", "train.lr=0.1", "--reference", "flora"], "--reference 'flora' is not one of --methods"),
        (["--grid", "train.lr=0.1", "--set", "run.seed=2", "--seeds", "0,1"], "use --seeds instead"),
        (["--methods", "raflora"], "at least one --grid"),
    ],
)
def test_bad_input_fails_before_any_run(tmp_path, capsys, args, message):
    out = tmp_path / "sw"
    assert main(["sweep", str(SYNTHETIC), "--methods", "raflora,flexlora", "--out", str(out), *FAST, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert not out.exists()


def test_sweep_end_to_end(swept):
    out = swept
    runs = sorted(str(p.parent.relative_to(out)) for p in out.rglob("metrics.jsonl"))
    assert runs == [f"point-{p}/{m}/seed-{s}" for p in (1, 2, 3) for m in ("flexlora", "raflora") for s in (0, 1)]
    config = tomllib.loads((out / "point-3" / "raflora" / "seed-1" / "config.toml").read_text())
    assert config["ranks"]["policy"] == "uniform" and config["ranks"]["ranks"] == [2, 8] and config["run"]["seed"] == 1
    assert tomllib.loads((out / "point-2" / "flexlora" / "seed-0" / "config.toml").read_text())["train"]["lr"] == 0.05
    report = json.loads((out / "report" / "report.json").read_text())
    assert [g["label"] for g in report["groups"]] == [
        f"point-{p}/{m}" for p in (1, 2, 3) for m in ("raflora", "flexlora")
    ]
    # paired within a point: raflora (the first method) minus flexlora at the same learning rate / rank policy
    assert [(p["reference"], p["other"]) for p in report["paired"]] == [
        (f"point-{k}/raflora", f"point-{k}/flexlora") for k in (1, 2, 3)
    ]
    sweep = report["sweep"]
    assert [p["settings"] for p in sweep["points"]] == [
        {"train.lr": 0.01},
        {"train.lr": 0.05},
        {"ranks.policy": "uniform", "ranks.ranks": [2, 8]},
    ]
    groups = {g["label"]: g for g in report["groups"]}
    for cell in sweep["cells"]:
        assert cell["group"] == f"{cell['point']}/{cell['method']}" and cell["same_as"] is None
        assert cell["final_metric"] == groups[cell["group"]]["final_metric"]
    text = (out / "report" / "report.md").read_text()
    assert "## Sweep" in text and '| point-3 | ranks.policy="uniform" ranks.ranks=[2, 8] |' in text
    # the sweep folder reported again, alone: the same sweep table from sweep.json
    assert main(["report", str(out), "--out", str(out / "again")]) == 0
    again = json.loads((out / "again" / "report.json").read_text())
    assert again["sweep"] == sweep and again["reference"] == "raflora" and again["paired"] == report["paired"]


def test_sweep_help(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "--grid 'KEY=VALUE [KEY=VALUE ...]' | KEY=V1,V2,..." in capsys.readouterr().out
