"""Reading, checking and writing :class:`raflora.config.Config` (TOML in, TOML out).

``[federation.method]`` holds ``name`` and that method's own options (the fields of its class in
:mod:`raflora.aggregation`); ``method = "NAME"`` in ``[federation]`` is short for a table with the
name alone (every option at its default). Run folders written before the method table existed
(``method``, ``tau``, ``rank_levels``, ``sfed_alpha`` flat in ``[federation]``) or before
``federation.empty_partition`` existed (their code dropped an unreached partition) are read with
``legacy=True`` (``report``, ``--resume``, ``export``); a config file with those flat keys is
refused with a line saying what to write instead.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from raflora.aggregation import AGGREGATORS, Method
from raflora.config import (
    EMPTY_PARTITIONS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PARTITIONS,
    RANK_POLICIES,
    RUNTIMES,
    SECTIONS,
    Config,
    ConfigError,
)

TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
# Flat [federation] keys of configs written before [federation.method]: the method that had each.
LEGACY_KEYS = {"tau": "florist", "rank_levels": "raflora", "sfed_alpha": "fedsa"}


def _check_value(where: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {TYPE_NAMES[item]}s, got {value!r}")
        return [_check_value(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e308:  # TOML integers have no bound here; float() would overflow
            raise ConfigError(f"{where} must be a finite number, got an integer of {len(str(abs(value)))} digits")
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where} must be {TYPE_NAMES[hint]}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return value


def method_from_table(table: Any, where: str = "federation.method") -> Method:
    """The method a ``[federation.method]`` table (or a bare name) describes, options checked."""
    spelled = where if isinstance(table, str) else f"{where}.name"
    if isinstance(table, str):
        table = {"name": table}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a method name or a table with name = ..., got {table!r}")
    table = dict(table)
    name = table.pop("name", None)
    if name is None:
        raise ConfigError(f"{where} needs name = one of {', '.join(AGGREGATORS)}")
    if name not in AGGREGATORS:
        raise ConfigError(f"{spelled} = {name!r} is not known; choose one of {', '.join(AGGREGATORS)}")
    cls = AGGREGATORS[name]
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in cls.option_names():
            having = sorted(n for n, c in AGGREGATORS.items() if key in c.option_names())
            elsewhere = f" ({', '.join(having)} {'has' if len(having) == 1 else 'have'} it)" if having else ""
            raise ConfigError(
                f"unknown key {where}.{key} for method {name}{elsewhere}; {name}'s options: "
                f"{', '.join(cls.option_names()) or 'none'}"
            )
        values[key] = _check_value(f"{where}.{key}", value, hints[key])
    try:
        return cls(**values)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


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


# what a run folder written before federation.empty_partition existed did with an unreached partition
EMPTY_PARTITION_BEFORE_KEY = "drop"


def _legacy(data: dict[str, Any]) -> dict[str, Any]:
    """An older run folder's config as today's: the flat method keys, the reasoning task's
    ``bf16_autocast`` (now ``train.precision``), and ``federation.empty_partition``, which run
    folders hold resolved since it exists: one without it ran on code that always dropped."""
    data = dict(data)
    if isinstance(data.get("federation"), Mapping):
        data["federation"] = {"empty_partition": EMPTY_PARTITION_BEFORE_KEY, **_legacy_federation(data["federation"])}
    task = data.get("task")
    if isinstance(task, Mapping) and "bf16_autocast" in task:
        task = dict(task)
        if task.pop("bf16_autocast") is True:
            data["train"] = {**data.get("train", {}), "precision": "bf16"}
        data["task"] = task
    return data


def _section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table, got {name} = {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    table = dict(table)
    if name == "task":
        options = {k: table.pop(k) for k in list(table) if k not in known}
        table["options"] = {**table.get("options", {}), **options}
    if name == "federation":
        for key, owner in LEGACY_KEYS.items():
            if key in table:
                raise ConfigError(
                    f"federation.{key} is now an option of the method: write it under "
                    f'[federation.method] (name = "{owner}", {key} = ...)'
                )
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}; [{name}] takes: {', '.join(sorted(known))}")
        if name == "federation" and key == "method":
            values[key] = method_from_table(value)
        else:
            values[key] = _check_value(f"{name}.{key}", value, hints[key])
    return cls(**values)


def config_from_dict(data: Mapping[str, Any], legacy: bool = False) -> Config:
    """A checked :class:`Config` from a nested mapping (a parsed TOML document); ``legacy`` reads
    the flat ``[federation]`` method keys of older run folders."""
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}]; sections: {', '.join(SECTIONS)}")
    data = dict(data)
    if legacy:
        data = _legacy(data)
    config = Config(**{name: _section(name, cls, data.get(name, {})) for name, cls in SECTIONS.items()})
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
        data = _legacy(data)
    return config_from_dict(apply_overrides(data, overrides or {}))


def _one_of(where: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} = {value!r} is not known; choose one of {', '.join(allowed)}")


def _positive(where: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


# Upper bounds of the floats that multiply a step or an update. Finite is not enough: lr = 1e300
# passed validation and overflowed in the first round's optimiser step. The bounds sit far above
# any value used in practice, so they only refuse values that cannot train. num_clients likewise:
# a billion clients hung validation while it listed their ranks.
BOUNDS = {
    "federation.num_clients": 1_000_000,
    "train.lr": 10.0,
    "train.weight_decay": 10.0,
    "lora.alpha": 1e4,
    "partition.alpha": 1e6,
}


def _bounded(where: str, value: float, zero_ok: bool = False) -> None:
    _positive(where, value, zero_ok)
    if value > BOUNDS[where]:
        raise ConfigError(f"{where} = {value!r} is out of range; it must be at most {BOUNDS[where]:g}")


def validate(c: Config) -> None:
    """Cross-field checks; the first problem found raises ConfigError."""
    from raflora.client.device import check_spelling
    from raflora.lora import SCALINGS
    from raflora.ranks import client_ranks
    from raflora.tasks import TASKS, build_task
    from raflora.wire import TRANSPORT_DTYPES

    _positive("run.rounds", c.run.rounds)
    _positive("run.threads", c.run.threads)
    _positive("run.keep_checkpoints", c.run.keep_checkpoints)
    _one_of("run.runtime", c.run.runtime, RUNTIMES)
    check_spelling(c.run.device, c.train.precision)  # whether this machine has the device: when a run starts
    f = c.federation
    _bounded("federation.num_clients", f.num_clients)
    _one_of("federation.transport_dtype", f.transport_dtype, list(TRANSPORT_DTYPES))
    if not 0.0 < f.sample_fraction <= 1.0:
        raise ConfigError(f"federation.sample_fraction must be in (0, 1], got {f.sample_fraction}")
    if not 0 <= f.sample_count <= f.num_clients:
        raise ConfigError(
            f"federation.sample_count must be between 0 and num_clients ({f.num_clients}), got {f.sample_count}"
        )
    _validate_faults(c)
    if not 0.0 < f.round_timeout <= 86400.0:
        raise ConfigError(f"federation.round_timeout must be in (0, 86400] seconds, got {f.round_timeout}")
    _validate_ranks(c)
    ranks = sorted(set(client_ranks(c.ranks, f.num_clients, c.run.seed)))
    try:
        f.method.check_ranks(ranks)
    except ValueError as err:
        raise ConfigError(f"federation.method {err}") from None
    _one_of("lora.scaling", c.lora.scaling, SCALINGS)
    _bounded("lora.alpha", c.lora.alpha)
    if not 0.0 <= c.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {c.lora.dropout}")
    t = c.train
    _one_of("train.optimizer", t.optimizer, OPTIMIZERS)
    _one_of("train.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    _bounded("train.lr", t.lr)
    _positive("train.batch_size", t.batch_size)
    _positive("train.local_steps", t.local_steps, zero_ok=True)
    _positive("train.local_epochs", t.local_epochs, zero_ok=True)
    if t.local_steps == 0 and t.local_epochs == 0:
        raise ConfigError("train.local_steps and train.local_epochs are both 0; set one of them")
    _positive("train.grad_clip", t.grad_clip, zero_ok=True)
    _bounded("train.weight_decay", t.weight_decay, zero_ok=True)
    if not 0.0 <= t.momentum < 1.0:
        raise ConfigError(f"train.momentum must be in [0, 1), got {t.momentum}")
    p = c.partition
    _one_of("partition.scheme", p.scheme, PARTITIONS)
    _bounded("partition.alpha", p.alpha)
    _positive("partition.min_examples", p.min_examples)
    _positive("eval.batch_size", c.eval.batch_size)
    _positive("eval.every", c.eval.every)
    _positive("eval.max_examples", c.eval.max_examples, zero_ok=True)
    if not 0.0 <= c.eval.validation <= 0.5:
        raise ConfigError(f"eval.validation must be in [0, 0.5], got {c.eval.validation!r}")
    _one_of("task.name", c.task.name, sorted(TASKS))
    for key, value in c.task.options.items():
        if key.endswith("_file") and isinstance(value, str) and not Path(value).expanduser().is_file():
            raise ConfigError(
                f"task.{key}: file {value!r} does not exist (relative paths start at the working directory)"
            )
    try:
        build_task(c.task.name, **c.task.options)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        raise ConfigError(f"[task]: {err}") from None


def _validate_faults(c: Config) -> None:
    """The federation's fault keys; resolves ``empty_partition = ""`` to the method's own rule, so
    the run's config.toml records the rule that was used."""
    from raflora.aggregation.validate import check_ratio

    f = c.federation
    try:
        check_ratio(f.max_norm_ratio)
    except ValueError:
        raise ConfigError(
            f"federation.max_norm_ratio must be 0 (off) or a number >= 1, got {f.max_norm_ratio!r}"
        ) from None
    if not 0.0 <= f.dropout < 1.0:
        raise ConfigError(f"federation.dropout must be in [0, 1), got {f.dropout!r}")
    if f.empty_partition == "":
        f.empty_partition = "keep" if f.method.keeps_global else "drop"
    _one_of("federation.empty_partition", f.empty_partition, EMPTY_PARTITIONS)
    problem = f.method.keep_problem()
    if f.empty_partition == "keep" and problem:
        raise ConfigError(
            f"federation.empty_partition = 'keep' does not apply to {f.method.name}: {problem}; "
            "use 'drop' or leave it out"
        )


def _validate_ranks(c: Config) -> None:
    r = c.ranks
    _one_of("ranks.policy", r.policy, RANK_POLICIES)
    _positive("ranks.r_max", r.r_max)
    _positive("ranks.r_min", r.r_min)
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
    out = {}
    for name in SECTIONS:
        section = getattr(config, name)
        values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        if name == "task":
            values = {"name": values["name"], **values["options"]}
        if name == "federation":
            values["method"] = {"name": section.method.name, **section.method.options()}
        out[name] = values
    return out


def config_to_toml(config: Config) -> str:
    """The resolved config (every default filled in) as TOML that :func:`load_config` reads back."""
    return tomli_w.dumps(config_to_dict(config))
