"""Runs of one setting over several seeds: mean and spread per group, and paired differences.

A *group* is the runs whose configs are equal except ``run.seed`` (and how a run was executed:
``run.out``, ``run.threads``, which change where and how fast, not what is computed): one method in
one setting, repeated over seeds. The grouping is read from the configs, not from folder names, so
``raflora report`` groups any set of runs, whoever made them.

A *paired difference* is ``reference - other`` seed by seed (with its 95 % interval, Wilcoxon p and
verdict: :mod:`raflora.report.significance`): the reference method's group and
another group of the same setting (configs equal except the method, its options, the seed and the
folder), over the seeds both have. Pairing by seed removes what the seed does to both (the
partition, the sampled clients, the initial adapters), which is most of the spread between runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from raflora.report.method_keys import follows_method
from raflora.report.significance import paired_inference

PER_RUN_KEYS = ("run.out", "run.seed", "run.threads")  # what changes between the runs of one group
STAT_FIELDS = ("final_metric", "best_metric", "rho_rmin_last", "final_loss")  # final_loss: the test loss
# which side of a paired difference is better, per field (rho_rmin has none)
BETTER = {"final_metric": "higher", "best_metric": "higher", "rho_rmin_last": None, "final_loss": "lower"}


def stats(values: Sequence[float]) -> dict[str, Any] | None:
    """Mean, sample standard deviation (n - 1; None for one value), min, max and the values."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def _setting(flat: dict[str, Any], drop: Callable[[str], bool]) -> str:
    return repr(sorted((k, repr(v)) for k, v in flat.items() if not drop(k)))


def _value(summary: dict, field: str) -> float | None:
    point = summary.get(field)
    return None if point is None else point["value"]


def _group_label(labels: list[str], method: str) -> str:
    if len(labels) == 1:
        return labels[0]
    # "raflora/seed-0", "raflora/seed-1" -> "raflora": the folders' common leading part
    parts = [label.split("/") for label in labels]
    common = []
    for pieces in zip(*parts):
        if len(set(pieces)) > 1:
            break
        common.append(pieces[0])
    return "/".join(common) or method


def _per_round(members: list[dict], field: str) -> list[dict]:
    by_round: dict[int, list[float]] = {}
    for summary in members:
        for row in summary["per_round"]:
            if row.get(field) is not None:  # a validation field is absent from summaries made without one
                by_round.setdefault(row["round"], []).append(row[field])
    return [{"round": k, **stats(v)} for k, v in sorted(by_round.items())]


def _energy_rounds(members: list[dict]) -> list[dict]:
    # mean share per partition and round over the seeds: the heatmap's cells
    by_round: dict[int, dict[str, list[float]]] = {}
    for summary in members:
        for row in summary["energy_per_round"]:
            cells = by_round.setdefault(row["round"], {})
            for key, share in row["shares"].items():
                if share is not None:
                    cells.setdefault(key, []).append(share)
    return [
        {"round": k, "shares": {key: statistics.fmean(v) for key, v in cells.items()}}
        for k, cells in sorted(by_round.items())
    ]


def build_groups(
    summaries: Sequence[dict], flats: Sequence[dict[str, Any]], metric: str, per_method: Sequence[str] = ()
) -> tuple[list[dict], list[str]]:
    """One group per setting, in the order of its first run, and each group's setting for pairing
    (its config without the method, the method's options, the seed and the folder, and the keys
    ``per_method`` that each method chose for itself, e.g. a tuned ``train.lr``); ``summaries``
    are the per-run numbers (:func:`raflora.report.summary.summarize_run`), ``flats`` the runs'
    flat configs."""
    order: dict[str, list[int]] = {}
    for i, flat in enumerate(flats):
        order.setdefault(_setting(flat, lambda key: key in PER_RUN_KEYS), []).append(i)
    groups, pair_settings, used = [], [], set()
    for indices in order.values():
        members = [summaries[i] for i in indices]
        method = members[0]["method"]
        label = _group_label([m["label"] for m in members], method)
        while label in used:  # two settings whose folders do not tell them apart
            label += "'"
        used.add(label)
        seeds = [flats[i].get("run.seed", 0) for i in indices]
        group = {
            "label": label,
            "method": method,
            "runs": [m["label"] for m in members],
            "seeds": seeds,
            "r_min": members[0]["r_min"],
        }
        pair_settings.append(
            _setting(flats[indices[0]], lambda key: key in PER_RUN_KEYS or follows_method(key) or key in per_method)
        )
        group.update({field: stats([_value(m, field) for m in members]) for field in STAT_FIELDS})
        for field in ("bytes_up", "bytes_down", "seconds"):
            group[field] = stats([m[field] for m in members])
        group["per_round"] = {
            metric: _per_round(members, metric),
            f"val_{metric}": _per_round(members, f"val_{metric}"),  # empty for runs without a validation set
            "rho_rmin": _per_round(members, "rho_rmin"),
        }
        group["energy_per_round"] = _energy_rounds(members)
        groups.append(group)
    return groups, pair_settings


def _seed_values(group: dict, summaries: dict[str, dict], field: str) -> dict[int, float]:
    values = {}
    for seed, label in zip(group["seeds"], group["runs"]):
        value = _value(summaries[label], field)
        if value is not None:
            values[seed] = value
    return values


def paired_differences(
    groups: Sequence[dict], pair_settings: Sequence[str], summaries: Sequence[dict], reference: str
) -> list[dict]:
    """``reference - other`` per seed for every group that has a reference group of its setting
    (``pair_settings``: :func:`build_groups`'s)."""
    by_label = {s["label"]: s for s in summaries}
    references = {setting: g for g, setting in zip(groups, pair_settings) if g["method"] == reference}
    pairs = []
    for group, setting in zip(groups, pair_settings):
        ref = references.get(setting)
        if ref is None or group is ref or group["method"] == reference:
            continue
        pair = {"reference": ref["label"], "other": group["label"]}
        for field in STAT_FIELDS:
            mine, theirs = _seed_values(ref, by_label, field), _seed_values(group, by_label, field)
            seeds = [s for s in ref["seeds"] if s in mine and s in theirs]
            diffs = {s: mine[s] - theirs[s] for s in seeds}
            values = list(diffs.values())
            pair[field] = (
                None
                if not diffs
                else {
                    **stats(values),
                    **paired_inference(values, BETTER[field]),
                    "per_seed": {str(s): d for s, d in diffs.items()},
                }
            )
        pairs.append(pair)
    return pairs
