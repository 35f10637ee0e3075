"""``raflora sweep``: a comparison (methods x seeds) at each point of a grid of config values, and
one report over all of it.

A point sets one or more config keys at once; each ``--grid`` is one point, or, for one key, a
comma-separated list of values is one point per value::

    --grid "ranks.policy=uniform"
    --grid "ranks.policy=groups ranks.ranks=[16,4,2] ranks.shares=[0.1,0.4,0.5]"
    --grid "train.lr=0.01,0.003,0.001"          # three points

A method's own option (``federation.method.tau``: florist's) applies only to the methods that have it
(:func:`raflora.report.method_keys.method_has_option`); a method for which a point sets nothing new
is not run again there: the sweep reuses its runs from the first point with the same settings for
it (flora does not depend on tau). Runs go to ``OUT/point-<p>/<method>/`` (``.../seed-<k>/`` with
seeds), the report to ``OUT/report/``. Every config and folder is checked before the first run.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raflora.compare import check_overrides, check_reference, run_and_report, run_configs
from raflora.config import Config, ConfigError
from raflora.report.method_keys import is_method_option, method_has_option

KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
# The next assignment starts where whitespace is followed by KEY=; a value may hold spaces ([16, 4, 2]).
NEXT_ASSIGNMENT = re.compile(r"\s+(?=[A-Za-z_][\w.]*=)")
SET_ELSEWHERE = {"federation.method": "--methods", "run.out": "--out", "run.seed": "--seeds"}


@dataclass
class Point:
    label: str  # "point-1": its folder under OUT
    settings: dict[str, Any]  # config key -> value, as TOML read it

    def text(self) -> str:
        return " ".join(f"{key}={json.dumps(value)}" for key, value in self.settings.items())


def _value(text: str) -> Any:
    # as --set reads a value: TOML, else a bare string (ranks.policy=uniform)
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes: ``[2,4],[4,8]`` -> two values."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    return pieces + [text[start:]]


def _assignment(text: str, grid: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not KEY.fullmatch(key) or not value.strip():
        raise ConfigError(
            f"--grid {grid!r}: expected KEY=VALUE [KEY=VALUE ...] or KEY=V1,V2,..., "
            'e.g. --grid "ranks.policy=groups ranks.shares=[0.1,0.4,0.5]" or --grid train.lr=0.01,0.001'
        )
    if key in SET_ELSEWHERE:
        raise ConfigError(f"--grid {grid!r}: sweep sets {key} for each run; use {SET_ELSEWHERE[key]}")
    return key, value


def parse_grid(texts: Sequence[str]) -> list[Point]:
    """The points of the ``--grid`` options, in order; ConfigError for bad syntax, a key set twice in
    one point, a key the sweep sets itself or a point given twice."""
    if not texts:
        raise ConfigError("sweep needs at least one --grid, e.g. --grid train.lr=0.01,0.001")
    points: list[dict[str, Any]] = []
    for grid in texts:
        assignments = [_assignment(part, grid) for part in NEXT_ASSIGNMENT.split(grid.strip())]
        keys = [key for key, _ in assignments]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ConfigError(f"--grid {grid!r} sets {twice[0]} twice")
        values = [_top_level_split(value) for _, value in assignments]
        if len(assignments) > 1 and any(len(v) > 1 for v in values):
            raise ConfigError(
                f"--grid {grid!r}: a point that sets several keys takes one value per key; "
                "give each point its own --grid"
            )
        if any(not piece.strip() for v in values for piece in v):
            raise ConfigError(f"--grid {grid!r}: an empty value")
        if len(assignments) == 1:
            points += [{keys[0]: _value(piece)} for piece in values[0]]
        else:
            points.append({key: _value(value) for key, value in assignments})
    seen = set()
    for settings in points:
        if repr(settings) in seen:
            raise ConfigError(f"--grid gives the point {Point('', settings).text()} twice")
        seen.add(repr(settings))
    return [Point(f"point-{k}", settings) for k, settings in enumerate(points, start=1)]


def settings_for(method: str, point: Point) -> dict[str, Any]:
    """What ``point`` sets for ``method``: every key except the options of other methods."""
    return {key: value for key, value in point.settings.items() if method_has_option(method, key)}


def _check_method_keys(points: Sequence[Point], methods: Sequence[str]) -> None:
    for point in points:
        for key in point.settings:
            if is_method_option(key) and not any(method_has_option(m, key) for m in methods):
                raise ConfigError(f"--grid {key}: a method option that none of --methods ({', '.join(methods)}) has")


def plan(
    config_path: str | Path,
    points: Sequence[Point],
    methods: Sequence[str],
    seeds: Sequence[int] | None,
    out: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> tuple[Path, dict[str, Config], list[dict]]:
    """The sweep folder, one checked config per run (keyed by its folder below it) and the cells:
    ``{"point", "method", "runs": [folders], "same_as": point label or None}`` per point and method."""
    from raflora.config_io import load_config

    _check_method_keys(points, methods)
    overrides = check_overrides(overrides or {}, seeds, command="sweep")
    base = load_config(config_path, overrides)
    folder = Path(out) if out else Path(f"runs/{base.run.name}-sweep")
    configs: dict[str, Config] = {}
    cells, first_seen = [], {}
    for point in points:
        for method in methods:
            mine = settings_for(method, point)
            earlier = first_seen.get((method, repr(mine)))
            if earlier is None:
                first_seen[method, repr(mine)] = point.label
                made = run_configs(
                    config_path,
                    folder / point.label,
                    [method],
                    seeds,
                    {**overrides, **mine},
                    where=f"{point.label} ({point.text()}): ",
                )
                configs.update({f"{point.label}/{name}": config for name, config in made.items()})
            source = earlier or point.label
            runs = [f"{source}/{method}" + ("" if seed is None else f"/seed-{seed}") for seed in seeds or [None]]
            cells.append({"point": point.label, "method": method, "runs": runs, "same_as": earlier})
    return folder, configs, cells


def sweep(
    config_path: str | Path,
    points: Sequence[Point],
    methods: Sequence[str],
    out: str | Path | None = None,
    *,
    seeds: Sequence[int] | None = None,
    reference: str | None = None,
    overrides: Mapping[str, object] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> tuple[Path, dict]:
    """Run every method (and seed) at every point, then write ``OUT/report/`` with the sweep table.
    ConfigError before any run for anything :func:`plan` or ``raflora compare`` refuses."""
    reference = check_reference(reference, methods)
    folder, configs, cells = plan(config_path, points, methods, seeds, out, overrides)
    grid = {
        "points": [{"label": p.label, "settings": p.settings} for p in points],
        "methods": list(methods),
        "reference": reference,
        "cells": cells,
    }
    return run_and_report(configs, folder, reference, overwrite=overwrite, log=log, progress=progress, sweep=grid)
