"""What a ``flwr run`` says in its run config (``[tool.flwr.app.config]`` + ``--run-config``).

``config`` (a TOML path that each app's process reads) or ``config-toml`` (its text) names the raflora
config. On top of it, the keys FlowerTune apps expose set the usual knobs without editing that file
(``0`` / ``""``: keep the config's value); both apps apply them, so server and nodes agree:

=====================  ===============================
run config key         raflora config key
=====================  ===============================
``num-server-rounds``  ``run.rounds``
``method``             ``federation.method`` (its default options)
``fraction-train``     ``federation.sample_fraction``
``local-steps``        ``train.local_steps``
``lr``                 ``train.lr``
=====================  ===============================

The ServerApp alone reads ``out``, ``resume``, ``overwrite``, ``min-nodes`` (the nodes round 1
waits for; ``0``: ``federation.num_clients``), ``nodes`` (the kind of nodes: ``"declared"``, each
declares its client id, rank and data file, or ``"partition-id"``, each plays one client of the
config; ``""``: declared when the task reads a data file, else partition-id) and ``node-auth``
(``true`` when the SuperLink authenticates nodes: a client id then stays with the node that first
declared it, for the run and across a resume).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raflora.config import Config, ConfigError
from raflora.config_io import apply_overrides

COMMON_KEYS = {
    "num-server-rounds": "run.rounds",
    "method": "federation.method",
    "fraction-train": "federation.sample_fraction",
    "local-steps": "train.local_steps",
    "lr": "train.lr",
}


def config_text(run_config: Mapping[str, Any]) -> str:
    """The raflora config that the run config names: the TOML text in ``config-toml``, else the
    file at the path in ``config`` (read by this process)."""
    if str(run_config.get("config-toml", "")):
        return str(run_config["config-toml"])
    path = str(run_config.get("config", ""))
    if not path:
        raise ConfigError("set the run config key `config` to the path of a raflora TOML config")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"run config key config = {path!r}: cannot read it here ({err.strerror})") from None


def overrides(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The raflora config keys that the common run config keys set (unset ones left out)."""
    out = {}
    for key, dotted in COMMON_KEYS.items():
        value = run_config.get(key)
        if value not in (None, "", 0, 0.0):
            out[dotted] = value
    if "federation.sample_fraction" in out:
        out["federation.sample_count"] = 0  # a fraction asked for on the command line wins
    return out


def config_data(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed raflora config with the common keys applied, not yet checked (a node replaces
    the data files first: the server's paths need not exist on it)."""
    text = config_text(run_config)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"the run's raflora config is not valid TOML: {err}") from None
    return apply_overrides(data, overrides(run_config))


def min_nodes(run_config: Mapping[str, Any]) -> int:
    value = int(run_config.get("min-nodes", 0) or 0)
    if value < 0:
        raise ConfigError(f"run config key min-nodes must be >= 0, got {value}")
    return value


NODE_KINDS = ("declared", "partition-id")


def declared_nodes(run_config: Mapping[str, Any], config: Config) -> bool:
    """Whether the run's nodes declare their own rank and data (``nodes``): the server decides, a
    node never does. Unset: declared when the task reads a data file (``train_file``)."""
    kind = str(run_config.get("nodes", "") or "")
    if not kind:
        return "train_file" in config.task.options
    if kind not in NODE_KINDS:
        raise ConfigError(f"run config key nodes must be one of {', '.join(NODE_KINDS)}, got {kind!r}")
    return kind == "declared"


def node_auth(run_config: Mapping[str, Any]) -> bool:
    value = run_config.get("node-auth", False)
    if not isinstance(value, bool):
        raise ConfigError(f"run config key node-auth must be true or false, got {value!r}")
    return value
