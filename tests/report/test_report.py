"""raflora report: report.json equals the numbers in each metrics.jsonl (recomputed here), the
plots are PNG files, report.md holds the rows, and unusable input gives one line and exit 2."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from raflora.cli import main

from .conftest import METHODS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _expected(records):
    """The summary of one run, computed straight from its metrics lines."""
    evaluated = [(r["round"], r["accuracy"]) for r in records if r["accuracy"] is not None]
    rho = [(r["round"], r["rho_rmin"]) for r in records if r.get("rho_rmin") is not None]
    best = max(v for _, v in evaluated)
    return {
        "rounds": len(records),
        "final_metric": {"round": evaluated[-1][0], "value": evaluated[-1][1]},
        "best_metric": {"round": min(k for k, v in evaluated if v == best), "value": best},
        "rho_rmin_first": {"round": rho[0][0], "value": rho[0][1]},
        "rho_rmin_last": {"round": rho[-1][0], "value": rho[-1][1]},
        "bytes_up": sum(r["bytes_up"] for r in records),
        "bytes_down": sum(r["bytes_down"] for r in records),
        "seconds": pytest.approx(sum(r["seconds"] for r in records), abs=1e-6),
        "rejected": sum(len(r["rejected"]) for r in records),
        "energy_by_partition": {"round": records[-1]["round"], "shares": records[-1]["energy_by_partition"]},
    }


def test_report_json_equals_the_metrics_files(comparison):
    folder, _ = comparison
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["task"] == "synthetic" and report["metric"] == "accuracy" and report["r_min"] == [2]
    assert [run["label"] for run in report["runs"]] == list(METHODS)
    # raflora's rule for an unreached rank partition is its own option, written into its config.toml;
    # a method option is not among the differences
    assert report["differences"] == {"federation.method": {m: m for m in METHODS}}
    for method in METHODS:
        assert ('empty_partition = "drop"' in (folder / method / "config.toml").read_text()) == (method == "raflora")
    for run in report["runs"]:
        records = _records(folder / run["label"])
        assert run["method"] == run["label"] and run["r_min"] == 2
        for key, value in _expected(records).items():
            assert run[key] == value, key
        assert [row["round"] for row in run["per_round"]] == [r["round"] for r in records]
        assert [row["accuracy"] for row in run["per_round"]] == [r["accuracy"] for r in records]
        assert [row["rho_rmin"] for row in run["per_round"]] == [r["rho_rmin"] for r in records]
        assert [row["train_loss"] for row in run["per_round"]] == [r["train_loss"] for r in records]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_plots_are_png_files(comparison):
    folder, _ = comparison
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["plots"] == ["metric.png", "rho_rmin.png", "energy.png", "energy_rounds.png", "bytes.png"]
    for name in report["plots"]:
        width, height = _png_size(folder / "report" / name)
        assert width > 100 and height > 100


def test_report_md_holds_the_rows(comparison):
    folder, _ = comparison
    text = (folder / "report" / "report.md").read_text()
    for method in METHODS:
        records = _records(folder / method)
        final = records[-1]
        first_rho = records[0]["rho_rmin"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} | {method} |"))
        assert f"| {final['accuracy']:.4f} (r3) |" in row
        assert f"| {first_rho:.3f} -> {final['rho_rmin']:.3f} |" in row
        assert "![rho_rmin.png](rho_rmin.png)" in text
    # eval.every = 2: round 1 has no accuracy, shown as "-" in the per-round table
    accuracy = text.split("### accuracy")[1].split("###")[0]
    assert "| 1 | - | - | - |" in accuracy
    assert "| federation.method | `raflora` | `flexlora` | `zero_pad` |" in text


def test_report_of_chosen_runs_and_default_folder(comparison, tmp_path, capsys):
    folder = tmp_path / "cmp"
    skip = shutil.ignore_patterns("checkpoints", "adapter")
    for method in METHODS:
        shutil.copytree(comparison[0] / method, folder / method, ignore=skip)
    assert main(["report", str(folder / "zero_pad"), str(folder / "raflora")]) == 0
    # several runs: a folder named after them, beside them (never one report/ that unrelated reports share)
    assert f"to {folder / 'report-zero_pad+raflora'}" in capsys.readouterr().out
    report = json.loads((folder / "report-zero_pad+raflora" / "report.json").read_text())
    assert [run["label"] for run in report["runs"]] == ["zero_pad", "raflora"]
    # a comparison folder stands for the runs in it, in name order
    assert main(["report", str(folder), "--out", str(tmp_path / "all")]) == 0
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert [run["label"] for run in report["runs"]] == sorted(METHODS)


def test_gaps_in_a_run_are_skipped(comparison, tmp_path):
    # a round whose updates were all refused has no rho_rmin and no energy; NaN is written as null
    run = tmp_path / "gaps"
    shutil.copytree(comparison[0] / "raflora", run, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    records = _records(run)
    for key in ("rho_rmin", "energy_by_partition", "rho_rmin_by_module", "energy_by_partition_by_module"):
        records[0].pop(key)
        records[2].pop(key)
    records[2]["rejected"] = [{"client": None, "module": None, "reason": "no valid updates"}]
    records[2]["train_loss"] = None
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    (summary,) = json.loads((tmp_path / "out" / "report.json").read_text())["runs"]
    assert summary["rho_rmin_first"] == summary["rho_rmin_last"] == {"round": 2, "value": records[1]["rho_rmin"]}
    assert summary["energy_by_partition"]["round"] == 2 and summary["rejected"] == 1
    assert all((tmp_path / "out" / name).stat().st_size > 0 for name in ("energy.png", "rho_rmin.png"))


def _bad_runs(root, comparison):
    good = comparison[0] / "raflora"
    no_metrics = root / "no_metrics"
    no_metrics.mkdir()
    shutil.copy(good / "config.toml", no_metrics)
    no_config = root / "no_config"
    no_config.mkdir()
    shutil.copy(good / "metrics.jsonl", no_config)
    broken = root / "broken"
    broken.mkdir()
    shutil.copy(good / "config.toml", broken)
    (broken / "metrics.jsonl").write_text(good.joinpath("metrics.jsonl").read_text() + "{not json\n")
    bad_ranks = root / "bad_ranks"
    bad_ranks.mkdir()
    shutil.copy(good / "metrics.jsonl", bad_ranks)
    config = good.joinpath("config.toml").read_text().replace('policy = "cycle"', 'policy = "fancy"')
    (bad_ranks / "config.toml").write_text(config)
    other_task = root / "other_task"
    other_task.mkdir()
    shutil.copy(good / "metrics.jsonl", other_task)
    config = good.joinpath("config.toml").read_text().replace('name = "synthetic"', 'name = "reasoning"')
    (other_task / "config.toml").write_text(config)
    return good


@pytest.mark.parametrize(
    "runs, message",
    [
        (["missing"], "run folder '{root}/missing' does not exist"),
        (["no_metrics"], "'{root}/no_metrics' holds no metrics.jsonl"),
        (["no_config"], "'{root}/no_config' holds no config.toml"),
        (["broken"], "{root}/broken/metrics.jsonl:4: not a JSON object"),
        (["GOOD", "other_task"], "runs of different tasks cannot share a report"),
        (["bad_ranks"], "{root}/bad_ranks/config.toml: cannot tell the client ranks from [ranks]"),
        (["GOOD", "GOOD"], "given twice"),
    ],
)
def test_bad_input_exits_2_with_one_line(comparison, tmp_path, capsys, runs, message):
    good = _bad_runs(tmp_path, comparison)
    folders = [str(good) if name == "GOOD" else str(tmp_path / name) for name in runs]
    assert main(["report", *folders, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message.format(root=tmp_path) in captured.err
    assert not (tmp_path / "out").exists()


def test_runs_of_one_task_with_other_ranks(comparison, tmp_path):
    # another rank set is another r_min: each run reports its own, and the ranks show as a difference
    folder = comparison[0]
    other = tmp_path / "ranks8"
    shutil.copytree(folder / "flexlora", other, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    config = (other / "config.toml").read_text()
    assert 'policy = "cycle"' in config
    (other / "config.toml").write_text(config.replace('policy = "cycle"', 'policy = "homogeneous"'))
    assert main(["report", str(folder / "raflora"), str(other), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["r_min"] == [2, 8] and [run["r_min"] for run in report["runs"]] == [2, 8]
    assert report["differences"]["ranks.policy"] == {"raflora": "cycle", "ranks8": "homogeneous"}
    assert "| ranks.policy | `cycle` | `homogeneous` |" in (tmp_path / "out" / "report.md").read_text()


def _as_older_folder(run, empty_partition: str) -> None:
    """Rewrite a run's config.toml as a version with ``federation.empty_partition`` and without
    ``run.keep_checkpoints`` wrote it (the method flat in ``[federation]``)."""
    config = (run / "config.toml").read_text()
    name = config.split("[federation.method]\nname = ", 1)[1].split("\n", 1)[0]
    head, _, rest = config.partition("[federation.method]\n")
    rest = rest.split("\n\n", 1)[1]  # the method table's lines go
    head = head.replace("[federation]\n", f'[federation]\nmethod = {name}\nempty_partition = "{empty_partition}"\n')
    (run / "config.toml").write_text((head + rest).replace("keep_checkpoints = 2\n", ""))


def test_what_differs_lists_only_what_the_user_changed(comparison, tmp_path):
    # older folders recorded each method's own rule for an unreached partition and lack newer keys:
    # neither is a difference; raflora's rule changed from its default is, in its method label
    folder = comparison[0]
    for label, method, rule in (("a", "raflora", "drop"), ("b", "flexlora", "drop"), ("c", "raflora", "keep")):
        shutil.copytree(folder / method, tmp_path / label, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
        _as_older_folder(tmp_path / label, rule)
    shutil.copytree(folder / "zero_pad", tmp_path / "d", ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    assert "keep_checkpoints = 2" in (tmp_path / "d" / "config.toml").read_text()
    runs = [str(tmp_path / label) for label in "abcd"]
    assert main(["report", *runs, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["differences"] == {
        "federation.method": {"a": "raflora", "b": "flexlora", "c": "raflora (empty_partition='keep')", "d": "zero_pad"}
    }
    markdown = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "federation.empty_partition" not in markdown and "keep_checkpoints" not in markdown
    assert "federation.empty_partition" not in html and "keep_checkpoints" not in html
