"""report.md: the summary table (one row per run), the energy per rank partition and per-round
tables (one column per run), drawn from :func:`raflora.report.summary.build_report`'s numbers."""

from __future__ import annotations

from typing import Any, Callable, Sequence


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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def summary_table(report: dict) -> list[str]:
    metric = report["metric"]
    header = ["run", "method", "rounds", f"final {metric}", f"best {metric}", "final rho_rmin",
              "rho_rmin first -> last", "bytes up", "bytes down", "seconds", "rejected"]
    rows = []
    for run in report["runs"]:
        first, last = run["rho_rmin_first"], run["rho_rmin_last"]
        rows.append([
            run["label"], run["method"], f"{run['rounds']}",
            _at(run["final_metric"]), _at(run["best_metric"]), _num(last and last["value"], 3),
            "-" if first is None else f"{first['value']:.3f} -> {last['value']:.3f}",
            size(run["bytes_up"]), size(run["bytes_down"]), f"{run['seconds']:.1f}", f"{run['rejected']}",
        ])
    return markdown_table(header, rows)


def _partition_start(key: str) -> int:
    return int(key.split("-")[0].rstrip("+"))


def energy_table(report: dict) -> list[str]:
    runs = [run for run in report["runs"] if run["energy_by_partition"]]
    if not runs:
        return []
    keys = sorted({k for run in runs for k in run["energy_by_partition"]["shares"]}, key=_partition_start)
    rows = [[run["label"], f"{run['energy_by_partition']['round']}"]
            + [_num(run["energy_by_partition"]["shares"].get(k), 3) for k in keys] for run in runs]
    return markdown_table(["run", "round"] + [f"directions {k}" for k in keys], rows)


def per_round_table(report: dict, value: Callable[[dict], Any], show: Callable[[Any], str]) -> list[str]:
    """Rounds down, runs across; "-" where a run has no such round or no value (not evaluated).
    ``value`` picks the number from a per-round row."""
    runs = report["runs"]
    cells = [{row["round"]: value(row) for row in run["per_round"]} for run in runs]
    rounds = sorted(set().union(*cells))
    rows = [[f"{k}"] + ["-" if cell.get(k) is None else show(cell[k]) for cell in cells] for k in rounds]
    return markdown_table(["round"] + [run["label"] for run in runs], rows)


def _config_value(value: Any) -> str:
    return "-" if value is None else f"`{value}`"


def report_markdown(report: dict, plots: Sequence[str] = ()) -> str:
    metric = report["metric"]
    r_min = ", ".join(str(r) for r in report["r_min"])
    lines = [f"# Report: {len(report['runs'])} run(s) of task {report['task']}", "",
             f"Metric: `{metric}` on the test split (higher is better); `rho_rmin` is the energy share of "
             f"the global update's top r_min = {r_min} singular directions (1 = rank collapse). "
             "`(rN)`: the round a value comes from.", ""]
    lines += summary_table(report) + [""]
    if report["differences"]:
        lines += ["## What differs between the runs", ""]
        labels = [run["label"] for run in report["runs"]]
        lines += markdown_table(["config"] + labels, [[key] + [_config_value(values[label]) for label in labels]
                                                      for key, values in report["differences"].items()])
        lines.append("")
    energy = energy_table(report)
    if energy:
        lines += ["## Energy per rank partition, last round", "",
                  "Share of the global update's energy in each range of singular directions.", ""]
        lines += energy + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    lines += ["## Per round", ""]
    sections = [
        (f"{metric} (evaluated rounds)", lambda row: row[metric], lambda v: f"{v:.4f}"),
        ("rho_rmin", lambda row: row["rho_rmin"], lambda v: f"{v:.3f}"),
        ("train_loss (mean local training loss)", lambda row: row["train_loss"], lambda v: f"{v:.4f}"),
        ("bytes up + down", lambda row: row["bytes_up"] + row["bytes_down"], size),
        ("seconds", lambda row: row["seconds"], lambda v: f"{v:.2f}"),
    ]
    for title, value, show in sections:
        lines += [f"### {title}", ""] + per_round_table(report, value, show) + [""]
    return "\n".join(lines)
