"""The Flower runtime (``pip install .[flower]``): raflora's round protocol as a Flower ServerApp
(:mod:`.server_app`, with :class:`.strategy.RafloraStrategy`) and ClientApp (:mod:`.client_app`),
what travels as Flower records (:mod:`.records`), and :func:`run_flower`, which runs a config in
Flower's simulation engine in this process (one virtual SuperNode per client, Ray actors).

flwr 1.41 deprecates its Python simulation functions (``run_simulation``, and the older
``start_simulation``) in favour of ``flwr run``, whose local simulation federation starts a detached
``flower-superlink`` that outlives the command (fixed ports, state under ``$FLWR_HOME``) and has
its ``flwr-simulation`` process call ``flwr.simulation.run_simulation._run_simulation``. A
``raflora run`` must leave no daemon behind, so :func:`run_flower` calls that engine directly: what
``flwr-simulation`` runs and what the deprecated ``run_simulation`` wraps. The name is private;
the flower extra pins flwr to 1.41.x, and the Ray test in tests/runtimes/test_flower.py fails if it
moves.

Deployment with ``flwr run`` / SuperLink / SuperNodes: see docs/flower.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

from raflora.config import Config
from raflora.config_io import config_to_toml
from raflora.federation.setup import check_inputs
from raflora.runtimes.folder import prepare_folder

# Flower and Ray phone home and check for updates by default; a run here does neither.
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}
# typer 0.20 (imported by flwr 1.41, flwr.common.config) re-exports two click helpers that click 8.5
# deprecates: importing flwr raises these DeprecationWarnings, which no raflora user can act on.
TYPER_DEPRECATIONS = (
    "'click.utils.get_binary_stream' is deprecated",
    "'click.utils.get_text_stream' is deprecated",
)


def hide_typer_deprecations() -> None:
    """Ignore :data:`TYPER_DEPRECATIONS` here (the caller holds ``warnings.catch_warnings()``) and in
    the processes Ray starts, which import flwr before any raflora code runs and inherit this
    process's environment (``PYTHONWARNINGS``, whose later entries win)."""
    for start in TYPER_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=DeprecationWarning, module="typer")
    ours = [f"ignore:{start}:DeprecationWarning:typer" for start in TYPER_DEPRECATIONS]
    theirs = [option for option in os.environ.get("PYTHONWARNINGS", "").split(",") if option and option not in ours]
    os.environ["PYTHONWARNINGS"] = ",".join(theirs + ours)


def run_flower(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    cpus: int | None = None,
) -> list[dict]:
    """Run ``config`` under Flower's simulation engine; returns every round's metrics.

    The run folder is the embedded runtime's (``config.toml``, ``metrics.jsonl``, ``checkpoints/``,
    ``adapter/``), checked before Ray starts, and so are the data and the model. Each virtual client gets one CPU; ``cpus`` (default:
    every core, at most one per client) caps how many train at once.
    """
    prepare_folder(config, Path(config.out), resume, overwrite)
    check_inputs(config)  # the ServerApp reads the data under Ray, where a ConfigError is no longer one line
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    with warnings.catch_warnings():
        hide_typer_deprecations()
        from flwr.simulation.run_simulation import _run_simulation
        from flwr.supercore.telemetry import EventType

        from raflora.runtimes.flower.client_app import build_client_app
        from raflora.runtimes.flower.server_app import build_server_app

    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    n = config.federation.num_clients
    cpus = cpus or max(1, min(n, os.cpu_count() or 1))
    _run_simulation(
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,  # telemetry is off (QUIET_ENV); the name is the API's
        server_app=build_server_app(config, resume=resume, stop_after=stop_after, log=log),
        client_app=build_client_app(config_to_toml(config)),
        num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": "ERROR"},
        },
    )
    lines = (Path(config.out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
