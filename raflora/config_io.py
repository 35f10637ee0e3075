"""Reading, checking and writing :class:`raflora.config.Config` (TOML in, TOML out).

The checks are the typed schema of :mod:`raflora.config` (every key's type and bounds; a key no
model has is refused) and :func:`validate` (what relates several keys). A pydantic error becomes one
line naming the key's dotted path (:func:`one_line`), raised as :class:`ConfigError` (exit code 2).

``[federation.method]`` holds ``name`` and that method's own options (the fields of its class in
:mod:`raflora.aggregation`); ``method = "NAME"`` in ``[federation]`` is short for a table with the
name alone (every option at its default). Run folders written by older versions are read with
``legacy=True`` (``report``, ``--resume``, ``export``, ``scripts/reproduce.py``):

- before the method table existed (``method``, ``tau``, ``rank_levels``, ``sfed_alpha`` flat in
  ``[federation]``);
- with ``federation.empty_partition`` (between its introduction and its move into raflora's
  options): raflora's ``keep``/``drop`` becomes its option ``federation.method.empty_partition``;
  carryover with ``keep`` is carryover; carryover with ``drop`` ran as FlexLoRA (the round never
  passed it the previous global update) and is read as ``flexlora``; another method with ``keep``
  ran a rule that is raflora's alone now and is refused. One notice line says so.
  A folder from before the key has none: its code dropped, raflora's default.
- without ``federation.max_client_weight``: its code capped no client's weight (read as 1.0).

A config file (not a run folder) with those keys is refused with a line saying what to write.
"""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from raflora.aggregation import AGGREGATORS, Method
from raflora.config import METHOD_MODELS, SECTIONS, TASK_MODELS, Config, ConfigError

log = logging.getLogger("raflora")

# Flat [federation] keys of configs written before [federation.method]: the method that had each.
LEGACY_KEYS = {"tau": "florist", "rank_levels": "raflora", "sfed_alpha": "fedsa"}
# what a run folder written before federation.empty_partition existed did with an unreached partition
EMPTY_PARTITION_BEFORE_KEY = "drop"
# the weight cap of a run folder written before federation.max_client_weight existed: none
MAX_CLIENT_WEIGHT_BEFORE_KEY = 1.0
_noticed: set[str] = set()


def unreached_rule(data: Mapping[str, Any]) -> str:
    """``keep`` or ``drop``: what the run whose parsed config.toml is ``data`` did with a rank
    partition no client of a round reached (the results page names each reference's rule)."""
    federation = data.get("federation", {})
    method = federation.get("method", {})
    method = {"name": method} if isinstance(method, str) else method
    if "empty_partition" in federation:  # written while it was a federation key
        return federation["empty_partition"]
    options = {k: v for k, v in method.items() if k != "name"}
    try:
        wants = AGGREGATORS[method.get("name", "raflora")](**options).wants_previous
    except (KeyError, TypeError, ValueError):  # a folder this version cannot read: the pre-key rule
        return EMPTY_PARTITION_BEFORE_KEY
    return "keep" if wants else "drop"


def _legacy_federation(table: Mapping[str, Any]) -> dict[str, Any]:
    """A pre-method-table ``[federation]`` (flat ``method``/``tau``/...) as today's: the keys the
    method has go into its table, the others (defaults another method would use) are dropped."""
    table = dict(table)
    if isinstance(table.get("method", {}), Mapping) and not any(k in table for k in LEGACY_KEYS):
        return table
    name = table.pop("method", "raflora")
    method = {"name": name} if isinstance(name, str) else dict(name)
    for key in LEGACY_KEYS:
        if key in table:
            value = table.pop(key)
            if key in AGGREGATORS.get(method.get("name"), Method).option_names():
                method[key] = value
    table["method"] = method
    return table


def _legacy_empty_partition(federation: dict[str, Any], where: str) -> dict[str, Any]:
    """``federation.empty_partition`` of a run folder written while it was a federation key, moved
    to what the method now decides itself (see the module's docstring), with one notice."""
    federation = dict(federation)
    rule = federation.pop("empty_partition")
    method = federation.get("method", "raflora")
    method = {"name": method} if isinstance(method, str) else dict(method)
    name = method.pop("name", "raflora")
    if name not in AGGREGATORS:
        raise ConfigError(f"{where}: federation.method = {name!r} is not known; choose one of {', '.join(AGGREGATORS)}")
    try:
        name, options, read = AGGREGATORS[name].read_legacy_rule(rule, method)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    method = {"name": name, **options}
    if where not in _noticed:
        _noticed.add(where)
        log.warning(
            f"{where}: federation.empty_partition is now raflora's option federation.method.empty_partition; "
            f'"{rule}" read as {read}'
        )
    federation["method"] = method
    return federation


def _legacy(data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """An older run folder's config as today's: the flat method keys, ``federation.empty_partition``,
    the reasoning task's ``bf16_autocast`` (now ``train.precision``) and no weight cap before
    ``federation.max_client_weight`` (its code weighted by the counts alone)."""
    data = dict(data)
    if isinstance(data.get("federation"), Mapping):
        data["federation"] = _legacy_federation(data["federation"])
        if "empty_partition" in data["federation"]:
            data["federation"] = _legacy_empty_partition(data["federation"], where)
    if isinstance(data.get("federation", {}), Mapping):
        data["federation"] = {"max_client_weight": MAX_CLIENT_WEIGHT_BEFORE_KEY, **data.get("federation", {})}
    task = data.get("task")
    if isinstance(task, Mapping) and "bf16_autocast" in task:
        task = dict(task)
        if task.pop("bf16_autocast") is True:
            data["train"] = {**data.get("train", {}), "precision": "bf16"}
        data["task"] = task
    return data


def _moved_keys(data: Mapping[str, Any]) -> None:
    """Refuse the keys that moved (a config file, not a run folder), saying what to write instead."""
    federation = data.get("federation")
    if not isinstance(federation, Mapping):
        return
    for key, owner in LEGACY_KEYS.items():
        if key in federation:
            raise ConfigError(
                f"federation.{key} is now an option of the method: write it under "
                f'[federation.method] (name = "{owner}", {key} = ...)'
            )
    if "empty_partition" in federation:
        method = federation.get("method", "raflora")
        name = method if isinstance(method, str) else method.get("name") if isinstance(method, Mapping) else None
        owner = AGGREGATORS.get(name) if isinstance(name, str) else None
        if owner is not None and "empty_partition" in owner.option_names():
            raise ConfigError(
                "federation.empty_partition is now raflora's option: write federation.method.empty_partition "
                f'= {federation["empty_partition"]!r} (under [federation.method], name = "raflora")'
            )
        raise ConfigError(
            f"federation.empty_partition does not apply to method {name}: what a method does with the previous "
            "global update is its own rule (carryover always carries it); raflora's is its option "
            "federation.method.empty_partition"
        )


def config_from_dict(data: Mapping[str, Any], legacy: bool = False) -> Config:
    """A checked :class:`Config` from a nested mapping (a parsed TOML document); ``legacy`` reads
    the keys of older run folders."""
    data = dict(data)
    if legacy:
        data = _legacy(data)
    _moved_keys(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise one_line(err) from None
    validate(config)
    return config


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"run.rounds": 5, "federation.method.tau": 0.8}`` style overrides on a parsed document
    (None values are skipped). A key is applied before the keys below it, so a method name
    (``federation.method``, which resets that method's options) comes before its options."""
    data = _copy_tables(data)
    for dotted in sorted((k for k, v in overrides.items() if v is not None), key=lambda k: k.count(".")):
        *path, key = dotted.split(".")
        table = data
        for part in path:
            child = table.setdefault(part, {})
            if isinstance(child, str) and dotted.startswith("federation.method."):
                child = table[part] = {"name": child}  # method = "x" shorthand, now with options
            if not isinstance(child, dict):  # `run = 5` in the file: there is no table to set a key in
                where = ".".join(path)
                raise ConfigError(f"[{where}] must be a table, got {where} = {child!r}; cannot set {dotted}")
            table = child
        table[key] = overrides[dotted]
    return data


def _copy_tables(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)``; the value is read as TOML (``"a"``, ``[2, 4]``,
    ``true``) and taken as a bare string when it is not valid TOML (``method=flexlora``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") < 1 or not all(key.split(".")):
        raise ConfigError(
            f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01 or federation.method.tau=0.8"
        )
    try:
        return key, tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value.strip()


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None, legacy: bool = False) -> Config:
    """Read a TOML config file, apply overrides, check everything; ConfigError on any problem.
    ``legacy``: also read the flat method keys of run folders written by older versions."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give the TOML file inside it")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as err:  # PermissionError and the like
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}: line {line} is not UTF-8 text (byte {raw[err.start]:#04x}); TOML files are UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    if legacy:
        data = _legacy(data, str(path))
    return config_from_dict(apply_overrides(data, overrides or {}))


def _dotted(loc: tuple) -> tuple[str, type | None]:
    """The dotted key of a pydantic error location (without the union's tag) and the model that
    holds the last key (None below a list or a mapping)."""
    parts: list[str] = []
    model: Any = Config
    loc = list(loc)
    while loc:
        key = loc.pop(0)
        parts.append(str(key))
        if model is Config and key in SECTIONS and key != "task":
            model = SECTIONS[key]
        elif (model is Config and key == "task") or (model is SECTIONS["federation"] and key == "method"):
            tables = TASK_MODELS if key == "task" else METHOD_MODELS
            model = tables.get(loc.pop(0)) if loc and loc[0] in tables else None
        elif loc:
            model = None
    return ".".join(parts), model


def _known(model: Any) -> str:
    return ", ".join(n for n in model.model_fields if n != "name") or "none"


def _bounds(model: Any, key: str) -> dict[str, float]:
    """The bounds (gt, ge, lt, le) of ``model``'s field ``key``."""
    out = {}
    for item in model.model_fields[key].metadata if model is not None and key in model.model_fields else ():
        for bound in ("gt", "ge", "lt", "le"):
            if getattr(item, bound, None) is not None:
                out[bound] = getattr(item, bound)
    return out


TYPE_NAMES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
}


def one_line(err: ValidationError) -> ConfigError:
    """The first problem of a pydantic ``ValidationError`` as one line naming the dotted key."""
    e = err.errors(include_url=False)[0]
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    where, model = _dotted(e["loc"])
    section, _, key = where.rpartition(".")
    if kind == "raflora_check":
        return ConfigError(f"{where} {ctx['text']}")
    if kind == "extra_forbidden":
        if not section:
            return ConfigError(f"unknown section [{where}]; sections: {', '.join(SECTIONS)}")
        if section == "task" and model is not None:
            name = model.model_fields["name"].annotation.__args__[0]
            return ConfigError(f"unknown key {where} for task {name}; {name}'s options: {_known(model)}")
        if section == "federation.method" and model is not None:
            name = model.model_fields["name"].annotation.__args__[0]
            having = sorted(n for n, c in AGGREGATORS.items() if key in c.option_names())
            elsewhere = f" ({', '.join(having)} {'has' if len(having) == 1 else 'have'} it)" if having else ""
            return ConfigError(f"unknown key {where} for method {name}{elsewhere}; {name}'s options: {_known(model)}")
        return ConfigError(f"unknown key {where}; [{section}] takes: {', '.join(sorted(model.model_fields))}")
    if kind == "union_tag_not_found":
        known = ", ".join(METHOD_MODELS if where == "federation.method" else TASK_MODELS)
        return ConfigError(f"{where} needs name = one of {known}")
    if kind == "union_tag_invalid":
        known = ", ".join(METHOD_MODELS if where == "federation.method" else TASK_MODELS)
        return ConfigError(f"{where}.name = {ctx['tag']!r} is not known; choose one of {known}")
    if kind == "value_error":
        return ConfigError(f"{where}: {ctx['error']}")
    if kind == "literal_error":
        allowed = ctx["expected"].replace("'", "").replace(" or ", ", ")
        return ConfigError(f"{where} = {value!r} is not known; choose one of {allowed}")
    if kind in ("model_type", "model_attributes_type", "dict_type") and "." not in where:
        return ConfigError(f"[{where}] must be a table, got {where} = {value!r}")
    if kind in ("model_type", "model_attributes_type"):
        return ConfigError(f"{where} must be a table, got {value!r}")
    if kind == "finite_number" or (kind == "float_type" and isinstance(value, int) and not isinstance(value, bool)):
        got = f"an integer of {len(str(abs(value)))} digits" if isinstance(value, int) else repr(value)
        return ConfigError(f"{where} must be a finite number, got {got}")
    if kind in TYPE_NAMES:
        return ConfigError(f"{where} must be {TYPE_NAMES[kind]}, got {value!r}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _bounds(model, key)
        if kind == "less_than_equal":
            return ConfigError(f"{where} = {value!r} is out of range; it must be at most {bounds['le']:g}")
        low = [f"({bounds['gt']:g}" if "gt" in bounds else f"[{bounds['ge']:g}" if "ge" in bounds else ""][0]
        high = [f"{bounds['lt']:g})" if "lt" in bounds else f"{bounds['le']:g}]" if "le" in bounds else ""][0]
        if low and high:
            return ConfigError(f"{where} must be in {low}, {high}, got {value!r}")
        return ConfigError(
            f"{where} must be {'> ' + format(bounds['gt'], 'g') if 'gt' in bounds else '>= ' + format(bounds.get('ge', 0), 'g')}, got {value!r}"
        )
    return ConfigError(f"{where}: {e['msg']}, got {value!r}")


def validate(c: Config) -> None:
    """What relates several keys (each key's type and bounds are the schema's); the first problem
    found raises ConfigError."""
    from raflora.client.device import check_spelling
    from raflora.ranks import client_ranks
    from raflora.tasks import build_task

    check_spelling(c.run.device, c.train.precision)  # whether this machine has the device: when a run starts
    f = c.federation
    if f.sample_count > f.num_clients:
        raise ConfigError(
            f"federation.sample_count must be between 0 and num_clients ({f.num_clients}), got {f.sample_count}"
        )
    _validate_ranks(c)
    ranks = sorted(set(client_ranks(c.ranks, f.num_clients, c.run.seed)))
    try:
        f.method.check_ranks(ranks)
    except ValueError as err:
        raise ConfigError(f"federation.method {err}") from None
    t = c.train
    if t.local_steps == 0 and t.local_epochs == 0:
        raise ConfigError("train.local_steps and train.local_epochs are both 0; set one of them")
    for key, value in c.task.options.items():
        if key.endswith("_file") and isinstance(value, str) and not Path(value).expanduser().is_file():
            raise ConfigError(
                f"task.{key}: file {value!r} does not exist (relative paths start at the working directory)"
            )
    try:
        build_task(c.task.name, **c.task.options)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        raise ConfigError(f"[task]: {err}") from None


def _validate_ranks(c: Config) -> None:
    r = c.ranks
    if r.r_min > r.r_max:
        raise ConfigError(f"ranks.r_min ({r.r_min}) is above ranks.r_max ({r.r_max})")
    used = {"homogeneous": [r.rank]}.get(r.policy, r.ranks if r.policy in ("explicit", "cycle", "groups") else [])
    if r.policy in ("explicit", "cycle", "groups") and not r.ranks:
        raise ConfigError(f"ranks.ranks must list at least one rank for policy {r.policy!r}")
    for rank in used:
        if rank < 1:
            raise ConfigError(f"rank {rank} in [ranks] must be >= 1")
        if rank > r.r_max:
            raise ConfigError(f"rank {rank} in [ranks] is above ranks.r_max = {r.r_max}")
    n = c.federation.num_clients
    if r.policy == "explicit" and len(r.ranks) != n:
        raise ConfigError(
            f"ranks.ranks lists {len(r.ranks)} ranks for {n} clients (policy 'explicit' needs one per client)"
        )
    if r.policy == "groups":
        if len(r.shares) != len(r.ranks):
            raise ConfigError(
                f"ranks.shares must have one share per rank in ranks.ranks ({len(r.ranks)}), got {len(r.shares)}"
            )
        if any(s < 0 for s in r.shares) or not math.isclose(sum(r.shares), 1.0, abs_tol=1e-6):
            raise ConfigError(f"ranks.shares must be non-negative and sum to 1, got {r.shares}")


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(config, name)
        if name == "task":
            out[name] = {"name": section.name, **section.options}
            continue
        values = {key: getattr(section, key) for key in type(section).model_fields}
        if name == "federation":
            values["method"] = {"name": section.method.name, **section.method.options()}
        out[name] = values
    return out


def config_to_toml(config: Config) -> str:
    """The resolved config (every default filled in) as TOML that :func:`load_config` reads back."""
    return tomli_w.dumps(config_to_dict(config))
