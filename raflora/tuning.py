"""Each method's own settings, chosen on validation from a sweep (``raflora compare --tuned SWEEP``).

A sweep over, say, ``--grid train.lr=0.03,0.01,0.003,0.001`` run with a validation set
(``--set eval.validation=0.2``) holds, for every method, its runs at every point. The choice for a
method is the point whose runs have the highest mean validation metric after the last round (over
the seeds; a tie goes to the lower mean validation loss, then to the earlier point). The test split
plays no part: runs without validation numbers are refused.

A comparison made with a choice runs every method at its own point and writes ``tuned.json`` next to
its runs: per method, the settings and the evidence (the sweep, each point's mean validation
metric). Its report pairs methods across those keys (they are the method's own, like its options),
and says so.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raflora.config import ConfigError
from raflora.report.tuned import TUNED_FILE  # noqa: F401  (where a comparison writes its choices)

if TYPE_CHECKING:
    from raflora.report.load import Run


def _validation(run: Run) -> tuple[float, float]:
    """The last record's validation metric and loss of ``run``."""
    if not run.records:
        raise ConfigError(f"--tuned: {run.path} holds no finished round")
    last = run.records[-1]
    value, loss = last.get(f"val_{run.metric}"), last.get("val_loss")
    if value is None:
        raise ConfigError(
            f"--tuned: {run.path} has no validation numbers (val_{run.metric}); run the sweep with "
            "--set eval.validation=0.2 so that the choice never reads the test split"
        )
    return float(value), float("inf") if loss is None else float(loss)


def choose(sweep_folder: str | Path, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method of ``methods``: ``{"settings": {...}, "point": label, "sweep": folder,
    "validation": {point label: mean validation metric}}``, chosen on validation from the sweep in
    ``sweep_folder`` (its ``sweep.json``). ConfigError (one line) for a folder that is not a sweep,
    a method the sweep did not run, or runs without validation numbers."""
    from raflora.report.load import ReportError, load_run

    folder = Path(sweep_folder)
    try:
        sweep = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--tuned {str(folder)!r}: not a sweep folder (no readable sweep.json: {err})") from None
    points = {p["label"]: p["settings"] for p in sweep["points"]}
    order = list(points)
    choices = {}
    for method in methods:
        cells = [c for c in sweep["cells"] if c["method"] == method]
        if not cells:
            raise ConfigError(
                f"--tuned {str(folder)!r}: the sweep did not run {method!r} (it ran {', '.join(sweep['methods'])})"
            )
        scores = {}
        for cell in cells:
            try:  # each run read once, by the report's reader (config and metrics)
                values = [_validation(load_run(folder / run)) for run in cell["runs"]]
            except ReportError as err:
                raise ConfigError(f"--tuned: {err}") from None
            scores[cell["point"]] = (
                statistics.fmean(v for v, _ in values),
                statistics.fmean(loss for _, loss in values),
            )
        best = max(scores, key=lambda p: (scores[p][0], -scores[p][1], -order.index(p)))
        choices[method] = {
            "settings": {k: v for k, v in points[best].items() if _applies(method, k)},
            "point": best,
            "sweep": str(folder),
            "validation": {p: scores[p][0] for p in order if p in scores},
        }
    return choices


def _applies(method: str, key: str) -> bool:
    from raflora.report.method_keys import method_has_option

    return method_has_option(method, key)
