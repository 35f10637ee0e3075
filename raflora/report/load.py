"""Reading run folders for a report: each run's resolved ``config.toml`` and ``metrics.jsonl``, and
a sweep folder's ``sweep.json`` (:func:`load_sweep`).

The config is read as plain TOML, not validated again: a run made on another machine (with a data
file that is not here) still reports. Every problem names the folder or file and the line.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raflora.config import ConfigError, RanksConfig


class ReportError(ConfigError):
    """Input a report cannot use (missing folder, unreadable metrics, runs of different tasks);
    reported as one line with exit code 2, like a config problem."""


@dataclass
class Run:
    """One run folder as the report sees it."""

    path: Path
    label: str  # the name in tables, legends and report.json
    config: dict[str, dict[str, Any]]  # the resolved config.toml, section -> key -> value
    records: list[dict]  # metrics.jsonl, one dict per round, in file order
    metric: str  # the task's metric field: "accuracy" or "exact_match"
    r_min: int  # smallest client rank: rho_rmin is measured at this rank
    client_ranks: list[int] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.config.get("task", {}).get("name", "?")

    @property
    def method(self) -> str:
        methods = {r.get("method") for r in self.records if r.get("method")}
        if len(methods) == 1:
            return methods.pop()
        return self.config.get("federation", {}).get("method", "?")


def _read_config(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "config.toml"
    if not path.is_file():
        raise ReportError(f"{str(folder)!r} holds no config.toml (not a run folder)")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ReportError(f"{path}: not valid TOML: {err}") from None
    if isinstance(config.get("federation"), dict):
        config["federation"] = dict(config["federation"], method=method_label(config["federation"]))
    return config


def method_label(federation: dict[str, Any]) -> str:
    """The ``[federation]`` table's method as one value for tables: its name, with the options that
    differ from the method's defaults (``florist (tau=0.8)``); reads older flat run folders too."""
    from raflora.aggregation import AGGREGATORS
    from raflora.config_io import _legacy_federation

    table = dict(_legacy_federation(federation)["method"])
    name = table.pop("name", "?")
    cls = AGGREGATORS.get(name)
    if "empty_partition" in federation and cls and "empty_partition" in cls.option_names():
        table.setdefault("empty_partition", federation["empty_partition"])  # an older folder's key
    defaults = cls().options() if cls else {}
    changed = ", ".join(f"{k}={v!r}" for k, v in table.items() if defaults.get(k, object()) != v)
    return f"{name} ({changed})" if changed else str(name)


def _read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{str(folder)!r} holds no metrics.jsonl (a run that never finished a round?)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}:{number}: not a JSON object: {err}") from None
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise ReportError(f"{path}:{number}: a metrics line needs an integer 'round'")
        records.append(record)
    if not records:
        raise ReportError(f"{path} is empty: the run finished no round")
    return records


def _metric_of(task: str) -> str:
    from raflora.tasks import TASKS

    if task not in TASKS:
        raise ReportError(f"unknown task {task!r} in config.toml; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task].metric


def _client_ranks(config: dict[str, dict[str, Any]]) -> list[int]:
    from raflora.ranks import client_ranks

    known = set(RanksConfig.model_fields)
    ranks = RanksConfig(**{k: v for k, v in config.get("ranks", {}).items() if k in known})
    federation, run = config.get("federation", {}), config.get("run", {})
    return client_ranks(ranks, int(federation.get("num_clients", 10)), int(run.get("seed", 0)))


def load_run(folder: str | Path, label: str | None = None) -> Run:
    """The run in ``folder``; ReportError naming the problem when it is not a readable run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"run folder {str(folder)!r} does not exist")
    config = _read_config(folder)
    records = _read_metrics(folder)
    task = config.get("task", {}).get("name", "?")
    try:
        ranks = _client_ranks(config)
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as err:
        raise ReportError(f"{folder / 'config.toml'}: cannot tell the client ranks from [ranks]: {err}") from None
    if not ranks:
        raise ReportError(f"{folder / 'config.toml'}: [ranks] gives no client a rank")
    return Run(
        path=folder,
        label=label or folder.name,
        config=config,
        records=records,
        metric=_metric_of(task),
        r_min=min(ranks),
        client_ranks=ranks,
    )


def _labels(folders: Sequence[Path]) -> list[str]:
    # The shortest tail of the paths that tells the runs apart: runs/cmp/raflora -> "raflora",
    # runs/cmp/raflora/seed-0 next to runs/cmp/flexlora/seed-0 -> "raflora/seed-0".
    parts = [f.resolve().parts for f in folders]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def _name_order(path: Path) -> list:
    # seed-2 before seed-10, point-9 before point-10
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]


def _runs_below(folder: Path) -> list[Path]:
    # a run folder is not searched further: its checkpoints/ and adapter/ hold no runs
    inside = []
    for child in sorted((p for p in folder.iterdir() if p.is_dir()), key=_name_order):
        if (child / "metrics.jsonl").is_file():
            inside.append(child)
        elif not (child / "config.toml").exists():
            inside += _runs_below(child)
    return inside


def expand(folders: Sequence[str | Path]) -> list[Path]:
    """The run folders: a folder without config.toml that holds runs at any depth (a ``raflora compare``
    folder, ``OUT/<method>/seed-<k>/`` or a sweep's ``OUT/point-<k>/<method>/``) stands for those runs,
    in name order."""
    paths = []
    for folder in map(Path, folders):
        inside = _runs_below(folder) if folder.is_dir() and not (folder / "config.toml").exists() else []
        paths += inside or [folder]
    return paths


def load_runs(folders: Sequence[str | Path]) -> list[Run]:
    """Every run in ``folders`` (see :func:`expand`); they must be runs of one task (one metric) to
    share a report."""
    if not folders:
        raise ReportError("no run folder given")
    paths = expand(folders)
    if len({p.resolve() for p in paths}) != len(paths):
        raise ReportError("a run folder is given twice")
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    first = runs[0]
    for run in runs[1:]:
        if (run.task, run.metric) != (first.task, first.metric):
            raise ReportError(
                f"runs of different tasks cannot share a report: {first.path} is {first.task} ({first.metric}), "
                f"{run.path} is {run.task} ({run.metric}); report them separately"
            )
    return runs


def finite(value: Any) -> float | None:
    """A number for tables and plots, or None (null, NaN, Inf, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# A sweep's grid: raflora sweep's sweep.json (points, methods, and which runs make each cell).
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
