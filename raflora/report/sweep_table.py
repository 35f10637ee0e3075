"""The sweep table of a report: one row per grid point, per method its final metric and final
rho_rmin (mean ± std over seeds), from ``raflora sweep``'s ``sweep.json`` (points, methods, and
which runs make each cell; a method a point sets nothing new for reuses an earlier point's runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from raflora.report.load import ReportError

SWEEP_FILE = "sweep.json"


def load_sweep(run_folders: Sequence[str | Path]) -> tuple[dict, Path] | None:
    """The grid of a sweep folder given alone (``raflora report OUT``), with that folder; else None."""
    if len(run_folders) != 1 or not (Path(run_folders[0]) / SWEEP_FILE).is_file():
        return None
    root = Path(run_folders[0])
    try:
        return json.loads((root / SWEEP_FILE).read_text()), root
    except json.JSONDecodeError as err:
        raise ReportError(f"{root / SWEEP_FILE}: not JSON: {err}") from None


def attach_sweep(report: dict, grid: dict, root: Path) -> None:
    """``report["sweep"]``: the grid with each cell's group and its numbers; a cell whose runs are
    not in the report (a sweep stopped early) has none."""
    group_of = {}
    by_label = {run["label"]: run for run in report["runs"]}
    for group in report["groups"]:
        for label in group["runs"]:
            group_of[Path(by_label[label]["path"]).resolve()] = group
    cells = []
    for cell in grid["cells"]:
        groups = {id(group_of[p]): group_of[p] for p in ((root / r).resolve() for r in cell["runs"]) if p in group_of}
        group = next(iter(groups.values())) if len(groups) == 1 else None
        cells.append(
            {
                **cell,
                "group": group and group["label"],
                "final_metric": group and group["final_metric"],
                "rho_rmin_last": group and group["rho_rmin_last"],
            }
        )
    report["sweep"] = {"points": grid["points"], "methods": grid["methods"], "cells": cells}


def _setting_text(settings: dict) -> str:
    return " ".join(f"{key}={json.dumps(value)}" for key, value in settings.items())


def sweep_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    from raflora.report.tables import spread

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
