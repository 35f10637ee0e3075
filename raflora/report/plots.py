"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- ``metric.png``: the task metric per evaluated round (rounds without evaluation are skipped)
- ``rho_rmin.png``: rho_rmin per round, the rank-collapse plot (1 = all energy in r_min directions)
- ``energy.png``: energy share per rank partition in the last round, grouped bars per run
- ``bytes.png``: cumulative bytes up and down per round
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PLOTS = ("metric.png", "rho_rmin.png", "energy.png", "bytes.png")
DPI = 100


def _figure(width: float = 6.4, height: float = 4.0, panels: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, k + 1) for k in range(panels)]
    return figure, axes


def _rounds_axis(ax, rounds: list[int]) -> None:
    ax.set_xlabel("round")
    if rounds and max(rounds) <= 20:
        ax.set_xticks(sorted(set(rounds)))
    ax.grid(alpha=0.3)


def plot_metric(report: dict, path: Path) -> None:
    metric = report["metric"]
    figure, (ax,) = _figure()
    rounds = []
    for run in report["runs"]:
        points = [(row["round"], row[metric]) for row in run["per_round"] if row[metric] is not None]
        rounds += [r for r, _ in points]
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=run["label"])
    _rounds_axis(ax, rounds)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of the global model ({report['task']})")
    ax.legend()
    figure.savefig(path)


def _r_min_text(report: dict) -> str:
    values = report["r_min"]
    if len(values) == 1:
        return f"r_min = {values[0]}"
    return "r_min: " + ", ".join(f"{run['label']} {run['r_min']}" for run in report["runs"])


def plot_rho(report: dict, path: Path) -> None:
    figure, (ax,) = _figure()
    rounds = []
    for run in report["runs"]:
        points = [(row["round"], row["rho_rmin"]) for row in run["per_round"] if row["rho_rmin"] is not None]
        rounds += [r for r, _ in points]
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=run["label"])
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    _rounds_axis(ax, rounds)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("rho_rmin (1 = rank collapse)")
    ax.set_title(f"Energy share of the top r_min directions ({_r_min_text(report)})")
    ax.legend()
    figure.savefig(path)


def _partition_start(key: str) -> int:
    return int(key.split("-")[0].rstrip("+"))


def plot_energy(report: dict, path: Path) -> None:
    figure, (ax,) = _figure()
    runs = [run for run in report["runs"] if run["energy_by_partition"]]
    keys = sorted({k for run in runs for k in run["energy_by_partition"]["shares"]}, key=_partition_start)
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        shares = run["energy_by_partition"]["shares"]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [shares.get(key) or 0.0 for key in keys], width=width,
               label=f"{run['label']} (round {run['energy_by_partition']['round']})")
    ax.set_xticks(range(len(keys)), [f"{key}" for key in keys])
    ax.set_xlabel("singular directions (rank partition)")
    ax.set_ylabel("share of the update's energy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Energy per rank partition, last round")
    ax.grid(axis="y", alpha=0.3)
    if runs:
        ax.legend()
    figure.savefig(path)


def plot_bytes(report: dict, path: Path) -> None:
    figure, axes = _figure(width=9.0, height=3.6, panels=2)
    largest = max(sum(row[d] for row in run["per_round"]) for run in report["runs"] for d in ("bytes_up", "bytes_down"))
    unit, divisor = ("MB", 1e6) if largest >= 1e6 else ("kB", 1e3)
    rounds = []
    for direction, ax in zip(("bytes_up", "bytes_down"), axes):
        for run in report["runs"]:
            rows = run["per_round"]
            rounds += [row["round"] for row in rows]
            total = list(accumulate(row[direction] for row in rows))
            ax.plot([row["round"] for row in rows], [b / divisor for b in total], marker="o", label=run["label"])
        _rounds_axis(ax, rounds)
        ax.set_ylim(bottom=0.0)
        ax.set_ylabel(f"{unit} (cumulative)")
        ax.set_title(f"{'uploaded by' if direction == 'bytes_up' else 'sent to'} clients")
    axes[0].legend()
    figure.savefig(path)


def write_plots(report: dict, out: Path) -> list[str]:
    """Draw every plot into ``out``; returns the file names, in :data:`PLOTS` order."""
    for name, draw in zip(PLOTS, (plot_metric, plot_rho, plot_energy, plot_bytes)):
        draw(report, out / name)
    return list(PLOTS)
