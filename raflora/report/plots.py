"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state).

One line (or bar) per group: the runs of one setting over seeds (a single run is a group of one).

- ``metric.png``: the task metric per evaluated round, the mean over seeds with the min-max band
  shaded; the axis spans at least :data:`MIN_METRIC_SPAN`, so a one-example difference on a small
  test split does not fill the plot
- ``rho_rmin.png``: rho_rmin per round, the rank-collapse plot (1 = all energy in r_min directions)
- ``energy.png``: energy share per rank partition in the last round, grouped bars per group
- ``energy_rounds.png``: a heatmap per group, rank partition x round, of the energy share (mean over
  seeds): collapse shows as the energy draining into the lowest partition round after round
- ``bytes.png``: total bytes uploaded and downloaded per run (mean over seeds), bars per group
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raflora.lora import partition_order

PLOTS = ("metric.png", "rho_rmin.png", "energy.png", "energy_rounds.png", "bytes.png")
DPI = 100
# Accuracy on 40-200 test examples moves in steps of 0.005-0.025; an axis narrower than this makes
# such a step look like a gap between methods.
MIN_METRIC_SPAN = 0.1


def _figure(width: float = 6.4, height: float = 4.0, panels: int = 1, rows: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    columns = math.ceil(panels / rows)
    axes = [figure.add_subplot(rows, columns, k + 1) for k in range(panels)]
    return figure, axes


def _rounds_axis(ax, rounds: list[int]) -> None:
    ax.set_xlabel("round")
    if rounds and max(rounds) <= 20:
        ax.set_xticks(sorted(set(rounds)))
    ax.grid(alpha=0.3)


def metric_limits(values: list[float], span: float = MIN_METRIC_SPAN) -> tuple[float, float]:
    """The metric axis: the data's range widened to at least ``span`` around its middle, inside [0, 1]."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < span:
        middle = (low + high) / 2
        low, high = middle - span / 2, middle + span / 2
        shift = max(0.0, -low) - max(0.0, high - 1.0)
        low, high = low + shift, high + shift
    margin = 0.03 * (high - low)
    return max(0.0, low - margin), min(1.0, high + margin)


def _mean_lines(ax, report: dict, field: str) -> list[float]:
    """Mean per round with the min-max band over seeds, one line per group; returns every value drawn."""
    drawn, rounds = [], []
    for group in report["groups"]:
        rows = group["per_round"][field]
        xs = [row["round"] for row in rows]
        (line,) = ax.plot(
            xs,
            [row["mean"] for row in rows],
            marker="o",
            markersize=3,
            label=group["label"] + (f" ({len(group['runs'])} seeds)" if len(group["runs"]) > 1 else ""),
        )
        if len(group["runs"]) > 1:
            ax.fill_between(
                xs,
                [row["min"] for row in rows],
                [row["max"] for row in rows],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
        drawn += [row[k] for row in rows for k in ("min", "max")]
        rounds += xs
    _rounds_axis(ax, rounds)
    return drawn


def plot_metric(report: dict, path: Path) -> None:
    metric = report["metric"]
    figure, (ax,) = _figure()
    drawn = _mean_lines(ax, report, metric)
    ax.set_ylim(*metric_limits(drawn))
    ax.set_ylabel(metric + (" (mean, band: min-max over seeds)" if _seeded(report) else ""))
    ax.set_title(f"{metric} of the global model ({report['task']})")
    ax.legend(fontsize="small" if len(report["groups"]) > 5 else None)
    figure.savefig(path)


def _seeded(report: dict) -> bool:
    return any(len(group["runs"]) > 1 for group in report["groups"])


def _r_min_text(report: dict) -> str:
    values = report["r_min"]
    if len(values) == 1:
        return f"r_min = {values[0]}"
    # one name per run would not fit a title once there are seeds; report.json has each run's
    return "r_min = " + ", ".join(map(str, values)) + " by run"


def plot_rho(report: dict, path: Path) -> None:
    figure, (ax,) = _figure()
    _mean_lines(ax, report, "rho_rmin")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("rho_rmin (1 = rank collapse)")
    ax.set_title(f"Energy share of the top r_min directions ({_r_min_text(report)})")
    ax.legend(fontsize="small" if len(report["groups"]) > 5 else None)
    figure.savefig(path)


def plot_energy(report: dict, path: Path) -> None:
    figure, (ax,) = _figure()
    # the last round of each group (mean over its seeds): one bar per group and partition
    groups = [
        (group["label"], group["energy_per_round"][-1]) for group in report["groups"] if group["energy_per_round"]
    ]
    keys = sorted({k for _, last in groups for k in last["shares"]}, key=partition_order)
    width = 0.8 / max(1, len(groups))
    for i, (label, last) in enumerate(groups):
        xs = [k + (i - (len(groups) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(
            xs, [last["shares"].get(key) or 0.0 for key in keys], width=width, label=f"{label} (round {last['round']})"
        )
    ax.set_xticks(range(len(keys)), [f"{key}" for key in keys])
    ax.set_xlabel("singular directions (rank partition)")
    ax.set_ylabel("share of the update's energy" + (" (mean over seeds)" if _seeded(report) else ""))
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Energy per rank partition, last round")
    ax.grid(axis="y", alpha=0.3)
    if groups:
        ax.legend(fontsize="small" if len(groups) > 5 else None)
    figure.savefig(path)


def plot_energy_rounds(report: dict, path: Path) -> None:
    groups = report["groups"]
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure, axes = _figure(width=4.2 * columns + 1.0, height=3.0 * rows, panels=len(groups), rows=rows)
    image = None
    for ax, group in zip(axes, groups):
        cells = group["energy_per_round"]
        keys = sorted({k for cell in cells for k in cell["shares"]}, key=partition_order)
        if not cells:
            ax.text(0.5, 0.5, "no energy recorded", ha="center", va="center", transform=ax.transAxes)
        else:
            grid = [[cell["shares"].get(key, math.nan) for cell in cells] for key in keys]
            rounds = [cell["round"] for cell in cells]
            image = ax.imshow(
                grid,
                aspect="auto",
                origin="lower",
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                extent=(rounds[0] - 0.5, rounds[-1] + 0.5, -0.5, len(keys) - 0.5),
            )
            ax.set_yticks(range(len(keys)), keys)
            ax.set_xlabel("round")
            if len(rounds) <= 12:  # few enough cells to print each share: 0.83 and 0.99 look alike in colour
                for row, _key in enumerate(keys):
                    for round_, share in zip(rounds, grid[row]):
                        if not math.isnan(share):
                            ax.text(
                                round_,
                                row,
                                f"{share:.2f}",
                                ha="center",
                                va="center",
                                fontsize=7,
                                color="black" if share > 0.6 else "white",
                            )
        ax.set_ylabel("singular directions")
        ax.set_title(group["label"], fontsize=10)
    if image is not None:
        figure.colorbar(image, ax=axes, label="energy share" + (" (seed mean)" if _seeded(report) else ""))
    figure.suptitle("Energy per rank partition and round (collapse: all energy in the lowest row)")
    figure.savefig(path)


def plot_bytes(report: dict, path: Path) -> None:
    groups = report["groups"]
    figure, (ax,) = _figure(width=max(6.4, 1.1 * len(groups) + 2.0))
    largest = max(g[d]["mean"] for g in groups for d in ("bytes_up", "bytes_down"))
    unit, divisor = ("GB", 1e9) if largest >= 1e9 else ("MB", 1e6) if largest >= 1e6 else ("kB", 1e3)
    width = 0.4
    for offset, direction, name in (
        (-width / 2, "bytes_up", "uploaded by clients"),
        (width / 2, "bytes_down", "sent to clients"),
    ):
        values = [g[direction]["mean"] / divisor for g in groups]
        bars = ax.bar([k + offset for k in range(len(groups))], values, width=width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(groups)), [g["label"] for g in groups], rotation=20 if len(groups) > 4 else 0)
    ax.set_ylim(0.0, 1.25 * largest / divisor if largest else 1.0)  # room for the labels and legend
    ax.set_ylabel(f"{unit} per run, all rounds" + (" (mean over seeds)" if _seeded(report) else ""))
    ax.set_title("Bytes per run")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=2)
    figure.savefig(path)


def plot_validation(report: dict, path: Path) -> None:
    """The validation metric per evaluated round (mean, min-max band over seeds): where a budget
    reaches its plateau, read on the validation set only."""
    metric = report["metric"]
    figure, (ax,) = _figure()
    drawn = _mean_lines(ax, report, f"val_{metric}")
    ax.set_ylim(*metric_limits(drawn))
    ax.set_ylabel(f"validation {metric}" + (" (mean, band: min-max over seeds)" if _seeded(report) else ""))
    ax.set_title(f"validation {metric} per round ({report['task']})")
    ax.legend(fontsize="small" if len(report["groups"]) > 5 else None)
    figure.savefig(path)


def plot_metric_against_bytes(report: dict, path: Path) -> None:
    """Each group's final metric (mean, min-max bar over seeds) against its bytes up + down per run:
    what a method's accuracy costs on the wire."""
    metric = report["metric"]
    figure, (ax,) = _figure()
    largest = max(g["bytes_up"]["mean"] + g["bytes_down"]["mean"] for g in report["groups"])
    unit, divisor = ("GB", 1e9) if largest >= 1e9 else ("MB", 1e6) if largest >= 1e6 else ("kB", 1e3)
    for group in report["groups"]:
        final = group["final_metric"]
        if final is None:
            continue
        x = (group["bytes_up"]["mean"] + group["bytes_down"]["mean"]) / divisor
        bar = [[final["mean"] - final["min"]], [final["max"] - final["mean"]]]
        ax.errorbar([x], [final["mean"]], yerr=bar, fmt="o", capsize=3, label=group["label"])
        ax.annotate(group["label"], (x, final["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{unit} up + down per run, all rounds" + (" (mean over seeds)" if _seeded(report) else ""))
    ax.set_ylabel(f"final {metric}" + (" (mean, bar: min-max over seeds)" if _seeded(report) else ""))
    ax.set_title(f"final {metric} against bytes ({report['task']})")
    ax.grid(alpha=0.3)
    figure.savefig(path)


def write_plots(report: dict, out: Path) -> list[str]:
    """Draw every plot into ``out``; returns the file names, in :data:`PLOTS` order."""
    for name, draw in zip(PLOTS, (plot_metric, plot_rho, plot_energy, plot_energy_rounds, plot_bytes)):
        draw(report, out / name)
    return list(PLOTS)
