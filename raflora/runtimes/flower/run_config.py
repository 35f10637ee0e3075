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

The ServerApp alone reads ``out``, ``resume``, ``overwrite`` and ``min-nodes`` (the nodes round 1
waits for; ``0``: ``federation.num_clients``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raflora.config import ConfigError
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
