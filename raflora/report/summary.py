"""The numbers of a report, computed from the loaded runs (what report.json holds).

Per run: the task metric at the last evaluated round and at its best round (on the validation
set when the run has one, ``eval.validation``; on the test split for runs without), ``rho_rmin`` (energy
share of the global update's top ``r_min`` directions; 1 = collapsed) first and last, totals of
bytes, seconds and rejected updates, the energy per rank partition of the last round, and one row
per round. ``differences`` lists the config values that are not the same in every run, as the user
(or the command: ``--set``, ``--methods``, ``--grid``, ``--seeds``) set them: a key a run's
config.toml lacks (written by an older version) counts at its default, and what a method decides
for itself (its options at their defaults, an older folder's ``federation.empty_partition``) is part
of ``federation.method``'s label, not a difference of its own.
``sweep`` (:func:`attach_sweep`): a sweep's grid with each cell's group and its numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raflora.report.groups import build_groups, paired_differences
from raflora.report.load import ReportError, Run, finite
from raflora.report.method_keys import FOLLOWS_METHOD

# Config keys that differ between any two runs without saying anything about the experiment.
IGNORED_DIFFERENCES = ("run.out",)
_MISSING = object()


def _last(values: list[tuple[int, float | None]]) -> dict | None:
    present = [(r, v) for r, v in values if v is not None]
    return {"round": present[-1][0], "value": present[-1][1]} if present else None


def _first(values: list[tuple[int, float | None]]) -> dict | None:
    present = [(r, v) for r, v in values if v is not None]
    return {"round": present[0][0], "value": present[0][1]} if present else None


def _best(values: list[tuple[int, float | None]]) -> dict | None:
    # accuracy and exact_match: higher is better; the earliest round wins a tie
    present = [(r, v) for r, v in values if v is not None]
    if not present:
        return None
    round_, value = max(present, key=lambda rv: (rv[1], -rv[0]))
    return {"round": round_, "value": value}


def round_row(record: dict, metric: str) -> dict[str, Any]:
    """One round of a run, with the fields a report shows (None where absent or not finite)."""
    return {
        "round": record["round"],
        metric: finite(record.get(metric)),
        "loss": finite(record.get("loss")),
        "train_loss": finite(record.get("train_loss")),
        "rho_rmin": finite(record.get("rho_rmin")),
        "bytes_up": int(record.get("bytes_up") or 0),
        "bytes_down": int(record.get("bytes_down") or 0),
        "seconds": finite(record.get("seconds")) or 0.0,
        "rejected": len(record.get("rejected") or []),
        f"val_{metric}": finite(record.get(f"val_{metric}")),
        "val_loss": finite(record.get("val_loss")),
    }


def last_energy(run: Run) -> dict | None:
    """Energy share per rank partition in the last round that has it."""
    for record in reversed(run.records):
        parts = record.get("energy_by_partition")
        if parts:
            return {"round": record["round"], "shares": {k: finite(v) for k, v in parts.items()}}
    return None


def energy_rounds(run: Run) -> list[dict]:
    """Energy share per rank partition in every round that has it (the heatmap's columns)."""
    return [
        {"round": r["round"], "shares": {k: finite(v) for k, v in r["energy_by_partition"].items()}}
        for r in run.records
        if r.get("energy_by_partition")
    ]


def summarize_run(run: Run) -> dict[str, Any]:
    rows = [round_row(r, run.metric) for r in run.records]
    metric = [(row["round"], row[run.metric]) for row in rows]
    validation = [(row["round"], row[f"val_{run.metric}"]) for row in rows]
    validated = any(v is not None for _, v in validation)
    rho = [(row["round"], row["rho_rmin"]) for row in rows]
    return {
        "label": run.label,
        "path": str(run.path),
        "method": run.method,
        "rounds": len(rows),
        "rounds_planned": run.config.get("run", {}).get("rounds"),
        "r_min": run.r_min,
        "client_ranks": run.client_ranks,
        "final_metric": _last(metric),
        # with a validation set: the best round and value on it (test is read once, at the end);
        # runs without one: the best test round, as they were reported
        "best_metric": _best(validation if validated else metric),
        "best_on": "validation" if validated else "test",
        "final_loss": _last([(row["round"], row["loss"]) for row in rows]),
        "rho_rmin_first": _first(rho),
        "rho_rmin_last": _last(rho),
        "bytes_up": sum(row["bytes_up"] for row in rows),
        "bytes_down": sum(row["bytes_down"] for row in rows),
        "seconds": round(sum(row["seconds"] for row in rows), 3),
        "rejected": sum(row["rejected"] for row in rows),
        "energy_by_partition": last_energy(run),
        "energy_per_round": energy_rounds(run),
        "per_round": rows,
    }


def _flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, table in config.items()
        if isinstance(table, dict)
        for key, value in table.items()
    }


def _default(key: str) -> Any:
    """The schema's default of a section key (``run.keep_checkpoints``); ``_MISSING`` for a task
    option (its default depends on the task) or a key the schema no longer has."""
    from raflora.config import SECTIONS

    section, _, name = key.partition(".")
    field = getattr(SECTIONS.get(section), "model_fields", {}).get(name) if section != "task" else None
    if field is None or field.is_required():
        return _MISSING
    return field.get_default(call_default_factory=True)


def _method_decides(key: str) -> bool:
    """An older folder's flat method keys (``federation.tau``, ``federation.empty_partition``): the
    method label (:func:`raflora.report.load.method_label`) holds what they changed."""
    from raflora.config_io import LEGACY_KEYS

    return key in FOLLOWS_METHOD or key in {f"federation.{name}" for name in LEGACY_KEYS}


def differences(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """``{"federation.method": {label: value, ...}}`` for every config value the runs do not share
    (see the module: a missing key is its default; a method's own choices are in its label)."""
    flats = [_flat(run.config) for run in runs]
    keys = sorted(k for k in set().union(*flats) - set(IGNORED_DIFFERENCES) if not _method_decides(k))
    table = {}
    for key in keys:
        default = _default(key)
        values = [flat.get(key, default) for flat in flats]
        if len({repr(v) for v in values}) > 1:
            table[key] = {run.label: None if v is _MISSING else v for run, v in zip(runs, values)}
    return table


def build_report(runs: Sequence[Run], reference: str | None = None, tuned: dict | None = None) -> dict[str, Any]:
    """Everything report.json holds (the tables and plots are drawn from the same numbers).

    ``groups`` are the runs of one setting over seeds (:mod:`.groups`), ``paired`` the differences
    ``reference`` method minus each other method of the same setting, seed by seed; the reference is
    by default the method of the first run. ReportError when no run has the reference method.
    ``tuned``: a comparison's per-method choices (:mod:`raflora.tuning`); the keys they set are
    the methods' own, so methods are paired across them.
    """
    from raflora.report.tuned import tuned_keys

    first = runs[0]
    summaries = [summarize_run(run) for run in runs]
    reference = reference or summaries[0]["method"]
    if reference not in {s["method"] for s in summaries}:
        methods = ", ".join(dict.fromkeys(s["method"] for s in summaries))
        raise ReportError(f"--reference {reference!r}: no run of that method; the runs are of {methods}")
    per_method = tuned_keys(tuned or {})
    groups, pair_settings = build_groups(summaries, [_flat(run.config) for run in runs], first.metric, per_method)
    return {
        "task": first.task,
        "metric": first.metric,
        "r_min": sorted({run.r_min for run in runs}),
        "differences": differences(runs),
        "reference": reference,
        # where "best" was chosen: "validation", "test" (runs without eval.validation), or "mixed"
        "best_on": "".join({s["best_on"] for s in summaries})
        if len({s["best_on"] for s in summaries}) == 1
        else "mixed",
        "runs": summaries,
        "groups": groups,
        "paired": paired_differences(groups, pair_settings, summaries, reference),
        "tuned": dict(tuned or {}),
    }


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
