"""The report's tables as (header, rows) of text cells, and report.md built from them: the summary
(one row per run), mean and spread per group of seeds, paired differences, the energy per rank
partition, per-round tables (one column per run) and a sweep's table (one row per grid point, per
method its final metric and final rho_rmin), all from :func:`raflora.report.summary.build_report`'s
numbers. report.html renders the same rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from raflora.lora import partition_order


def size(nbytes: float) -> str:
    """Bytes in decimal units, as the run's round lines print them."""
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.2f} MB"
    return f"{nbytes / 1e3:.1f} kB"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _at(point: dict | None, digits: int = 4) -> str:
    # "0.8800 (r5)": a value and the round it comes from
    return "-" if point is None else f"{point['value']:.{digits}f} (r{point['round']})"


def best(report: dict) -> str:
    """The "best" columns' name: chosen on the validation set, on the test split (runs without
    ``eval.validation``: test-selected, an optimistic number), or both kinds of runs mixed."""
    metric = report["metric"]
    return {"validation": f"best val {metric}", "mixed": f"best {metric} (val or test)"}.get(
        report.get("best_on", "test"), f"best {metric}"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def summary_table(report: dict) -> list[str]:
    return markdown_table(*summary_rows(report))


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    metric = report["metric"]
    header = [
        "run",
        "method",
        "rounds",
        f"final {metric}",
        best(report),
        "final rho_rmin",
        "rho_rmin first -> last",
        "bytes up",
        "bytes down",
        "seconds",
        "rejected",
    ]
    rows = []
    for run in report["runs"]:
        first, last = run["rho_rmin_first"], run["rho_rmin_last"]
        rows.append(
            [
                run["label"],
                run["method"],
                f"{run['rounds']}",
                _at(run["final_metric"]),
                _at(run["best_metric"]),
                _num(last and last["value"], 3),
                "-" if first is None else f"{first['value']:.3f} -> {last['value']:.3f}",
                size(run["bytes_up"]),
                size(run["bytes_down"]),
                f"{run['seconds']:.1f}",
                f"{run['rejected']}",
            ]
        )
    return header, rows


def spread(stat: dict | None, digits: int = 4, signed: bool = False) -> str:
    """``0.8800 ± 0.0120 [0.8700, 0.9000]``: mean ± sample std [min, max]; no ± for one seed.
    ``signed``: mean, min and max with their sign (paired differences: ``+0.0400 ± ...``)."""
    if stat is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{stat['mean']:{sign}.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std']:.{digits}f}"
    return text + (f" [{stat['min']:{sign}.{digits}f}, {stat['max']:{sign}.{digits}f}]" if stat["n"] > 1 else "")


def has_seeds(report: dict) -> bool:
    return any(len(group["runs"]) > 1 for group in report["groups"])


def group_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    metric = report["metric"]
    header = [
        "group",
        "method",
        "seeds",
        f"final {metric}",
        best(report),
        "final rho_rmin",
        "bytes up / run",
        "bytes down / run",
    ]
    rows = [
        [
            g["label"],
            g["method"],
            ",".join(str(s) for s in g["seeds"]),
            spread(g["final_metric"]),
            spread(g["best_metric"]),
            spread(g["rho_rmin_last"], 3),
            size(g["bytes_up"]["mean"]),
            size(g["bytes_down"]["mean"]),
        ]
        for g in report["groups"]
    ]
    return header, rows


def per_seed(diff: dict | None, digits: int) -> str:
    """A paired difference seed by seed: ``0: +0.0100, 1: -0.0050``."""
    if diff is None:
        return "-"
    return ", ".join(f"{seed}: {value:+.{digits}f}" for seed, value in diff["per_seed"].items())


def difference(stat: dict | None, digits: int) -> str:
    """A paired difference: ``+0.0400 [+0.0100, +0.0700] p 0.25 level``: the mean, its 95 %
    interval, the Wilcoxon p and the verdict (:mod:`raflora.report.significance`); the mean and
    ``level`` alone for one seed."""
    if stat is None:
        return "-"
    text = f"{stat['mean']:+.{digits}f}"
    if stat.get("ci95") is not None:
        low, high = stat["ci95"]
        text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    if stat.get("wilcoxon_p") is not None and stat["n"] > 1:
        text += f" p {stat['wilcoxon_p']:.2f}"
    return text + f" {stat['verdict']}" if "verdict" in stat else text


def paired_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    metric = report["metric"]
    header = [
        "reference - other",
        "seeds",
        f"final {metric}",
        f"final {metric} per seed",
        best(report),
        f"{best(report)} per seed",
        "final rho_rmin",
        "final rho_rmin per seed",
    ]
    rows = []
    for pair in report["paired"]:
        final = pair["final_metric"]
        rows.append(
            [
                f"{pair['reference']} - {pair['other']}",
                "-" if final is None else f"{final['n']}",
                difference(final, 4),
                per_seed(final, 4),
                difference(pair["best_metric"], 4),
                per_seed(pair["best_metric"], 4),
                difference(pair["rho_rmin_last"], 3),
                per_seed(pair["rho_rmin_last"], 3),
            ]
        )
    return header, rows


def energy_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    runs = [run for run in report["runs"] if run["energy_by_partition"]]
    keys = sorted({k for run in runs for k in run["energy_by_partition"]["shares"]}, key=partition_order)
    rows = [
        [run["label"], f"{run['energy_by_partition']['round']}"]
        + [_num(run["energy_by_partition"]["shares"].get(k), 3) for k in keys]
        for run in runs
    ]
    return ["run", "round"] + [f"directions {k}" for k in keys], rows


def energy_table(report: dict) -> list[str]:
    header, rows = energy_rows(report)
    return markdown_table(header, rows) if rows else []


def per_round_rows(
    report: dict, value: Callable[[dict], Any], show: Callable[[Any], str]
) -> tuple[list[str], list[list[str]]]:
    """Rounds down, runs across; "-" where a run has no such round or no value (not evaluated).
    ``value`` picks the number from a per-round row."""
    runs = report["runs"]
    cells = [{row["round"]: value(row) for row in run["per_round"]} for run in runs]
    rounds = sorted(set().union(*cells))
    rows = [[f"{k}"] + ["-" if cell.get(k) is None else show(cell[k]) for cell in cells] for k in rounds]
    return ["round"] + [run["label"] for run in runs], rows


def per_round_table(report: dict, value: Callable[[dict], Any], show: Callable[[Any], str]) -> list[str]:
    return markdown_table(*per_round_rows(report, value, show))


def per_round_sections(report: dict) -> list[tuple[str, Callable[[dict], Any], Callable[[Any], str]]]:
    """(title, value of a per-round row, how to show it) for each per-round table."""
    metric = report["metric"]
    return [
        (f"{metric} (evaluated rounds)", lambda row: row[metric], lambda v: f"{v:.4f}"),
        ("rho_rmin", lambda row: row["rho_rmin"], lambda v: f"{v:.3f}"),
        ("train_loss (mean local training loss)", lambda row: row["train_loss"], lambda v: f"{v:.4f}"),
        ("bytes up + down", lambda row: row["bytes_up"] + row["bytes_down"], size),
        ("seconds", lambda row: row["seconds"], lambda v: f"{v:.2f}"),
    ]


def difference_rows(report: dict, code: bool = True) -> tuple[list[str], list[list[str]]]:
    labels = [run["label"] for run in report["runs"]]
    show = (lambda v: "-" if v is None else f"`{v}`") if code else (lambda v: "-" if v is None else f"{v}")
    return ["config"] + labels, [
        [key] + [show(values[label]) for label in labels] for key, values in report["differences"].items()
    ]


def intro(report: dict) -> str:
    r_min = ", ".join(str(r) for r in report["r_min"])
    return (
        f"Metric: {report['metric']} on the test split (higher is better); rho_rmin is the energy share of "
        f"the global update's top r_min = {r_min} singular directions (1 = rank collapse). "
        "(rN): the round a value comes from."
    )


def _setting_text(settings: dict) -> str:
    return " ".join(f"{key}={json.dumps(value)}" for key, value in settings.items())


def sweep_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    sweep, metric = report["sweep"], report["metric"]
    header = ["point", "settings"]
    for method in sweep["methods"]:
        header += [f"{method} final {metric}", f"{method} final rho_rmin"]
    cells = {(c["point"], c["method"]): c for c in sweep["cells"]}
    rows = []
    for point in sweep["points"]:
        row = [point["label"], _setting_text(point["settings"])]
        for method in sweep["methods"]:
            cell = cells.get((point["label"], method))
            same = f" (= {cell['same_as']})" if cell and cell["same_as"] else ""
            row += [spread(cell and cell["final_metric"]) + same, spread(cell and cell["rho_rmin_last"], 3) + same]
        rows.append(row)
    return header, rows


SWEEP_NOTE = (
    "One row per grid point; cells: mean ± std [min, max] over seeds. '(= point-k)': the point "
    "sets nothing for this method (an option it does not have), so its runs of point-k stand here."
)


SEEDS_NOTE = (
    "Runs whose configs differ only in run.seed form a group. Cells: mean ± sample standard "
    "deviation [min, max] over the seeds. Paired differences: the reference method minus the "
    "other method of the same setting, seed by seed (positive: the reference is higher): the mean, "
    "its 95 % confidence interval (Student's t), the two-sided Wilcoxon signed-rank p and the verdict: "
    "ahead or behind only where the interval excludes 0, level otherwise."
)


def tuned_lines(report: dict) -> list[str]:
    """One line per method of a comparison run at its own settings (``compare --tuned``)."""
    lines = []
    for method, choice in report["tuned"].items():
        settings = ", ".join(f"{k} = {v!r}" for k, v in choice["settings"].items())
        scores = ", ".join(f"{p}: {v:.4f}" for p, v in choice["validation"].items())
        lines.append(
            f"- {method}: {settings} ({choice['point']} of {choice['sweep']}; mean validation metric {scores})"
        )
    return lines


def report_markdown(report: dict, plots: Sequence[str] = ()) -> str:
    lines = [f"# Report: {len(report['runs'])} run(s) of task {report['task']}", "", intro(report), ""]
    lines += summary_table(report) + [""]
    if report.get("tuned"):
        lines += ["## Each method's own settings, chosen on validation", ""] + tuned_lines(report) + [""]
    if has_seeds(report):
        lines += ["## Over seeds", "", SEEDS_NOTE, ""] + markdown_table(*group_rows(report)) + [""]
        if report["paired"]:
            lines += [f"### Paired differences (reference {report['reference']})", ""]
            lines += markdown_table(*paired_rows(report)) + [""]
    if report.get("sweep"):
        lines += ["## Sweep", "", SWEEP_NOTE, ""] + markdown_table(*sweep_rows(report)) + [""]
    if report["differences"]:
        lines += ["## What differs between the runs", ""] + markdown_table(*difference_rows(report)) + [""]
    energy = energy_table(report)
    if energy:
        lines += [
            "## Energy per rank partition, last round",
            "",
            "Share of the global update's energy in each range of singular directions.",
            "",
        ]
        lines += energy + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    lines += ["## Per round", ""]
    for title, value, show in per_round_sections(report):
        lines += [f"### {title}", ""] + per_round_table(report, value, show) + [""]
    return "\n".join(lines)
