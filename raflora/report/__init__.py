"""Reports over finished runs: report.md (tables), report.html (tables and plots in one page),
report.json (the same numbers) and PNG plots.

``write_report(["runs/cmp/raflora", "runs/cmp/flexlora"], "runs/cmp/report")`` reads each run's
``config.toml`` and ``metrics.jsonl`` (:mod:`.load`), computes the numbers (:mod:`.summary`) and
writes the tables (:mod:`.tables`) and plots (:mod:`.plots`). Runs of different tasks are refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from raflora.report.load import ReportError, Run, expand, load_run, load_runs, load_sweep
from raflora.report.summary import attach_sweep, build_report


def default_folder(run_folders: Sequence[str | Path]) -> Path:
    """``report/`` in the folder that holds the runs (runs/cmp/a, runs/cmp/b -> runs/cmp/report);
    for runs in different places, ``report/`` in their deepest common folder."""
    parents = [f.resolve().parent for f in expand(run_folders)]
    common = Path(os.path.commonpath(parents)) if parents else Path.cwd()
    try:
        common = common.relative_to(Path.cwd())
    except ValueError:
        pass
    return common / "report"


def write_report(
    run_folders: Sequence[str | Path],
    out: str | Path,
    reference: str | None = None,
    sweep: tuple[dict, Path] | None = None,
    tuned: dict | None = None,
) -> dict:
    """Write report.md, report.html, report.json and the plots for ``run_folders`` into ``out``;
    returns the report's numbers (report.json's content). Paired differences are ``reference``
    (a method; default the first run's) minus each other method of the same setting.
    ``sweep`` is a sweep's grid and folder (read from ``sweep.json`` when one sweep folder is given
    alone); it adds the sweep table. ``tuned``: a comparison's per-method choices (read from
    ``tuned.json`` when one comparison folder is given alone; :mod:`raflora.tuning`). ReportError
    (one line) for input it cannot use."""
    from raflora.report.html import report_html
    from raflora.report.plots import write_plots
    from raflora.report.tables import report_markdown

    runs = load_runs(run_folders)
    sweep = sweep or load_sweep(run_folders)
    if sweep and reference is None:
        reference = sweep[0].get("reference")  # the sweep's own, not the first run's in name order
    from raflora.report.tuned import load_tuned

    report = build_report(runs, reference, tuned if tuned is not None else load_tuned(run_folders))
    if sweep:
        attach_sweep(report, *sweep)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out)
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(report_markdown(report, plots))
    (out / "report.html").write_text(report_html(report, out, plots), encoding="utf-8")
    return report


__all__ = ["ReportError", "Run", "build_report", "default_folder", "load_run", "load_runs", "write_report"]
