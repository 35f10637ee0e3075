"""Runtimes drive the round protocol of :mod:`raflora.federation`: ``embedded`` runs every client
in this process (the default); ``flower`` runs the same server and client code as a Flower
ServerApp and ClientApp (``pip install .[flower]``). Same config, same seed: the same numbers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from raflora.config import Config, ConfigError

FLOWER_EXTRA = "install the flower extra: pip install .[flower]"
ROUNDS_UNDER_FLOWER = (
    "run.runtime = 'flower': a per-round callback or iterator needs the embedded runtime (the rounds run "
    "inside Flower's ServerApp); read the run folder's metrics.jsonl after the run instead"
)


def check_runtime(config: Config) -> None:
    """Refuse, before any work, a runtime whose packages are not installed."""
    if config.run.runtime == "flower" and importlib.util.find_spec("flwr") is None:
        raise ConfigError(f"run.runtime = 'flower' needs Flower (flwr), which is not installed; {FLOWER_EXTRA}")


def run(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``config`` with its ``run.runtime``; returns every round's metrics (as ``metrics.jsonl``).
    ``on_round`` receives each round's metrics record as the round ends (embedded runtime only)."""
    check_runtime(config)
    if config.run.runtime == "flower":
        if on_round is not None:
            raise ConfigError(ROUNDS_UNDER_FLOWER)
        from raflora.folder_lock import hold_folder
        from raflora.runtimes.flower import run_flower

        with hold_folder(config.out):  # one writer per run folder (the embedded runtime holds it itself)
            return run_flower(config, resume=resume, overwrite=overwrite, stop_after=stop_after, log=log)
    from raflora.runtimes.embedded import run_federation

    return run_federation(
        config, resume=resume, overwrite=overwrite, stop_after=stop_after, log=log, progress=progress, on_round=on_round
    )
