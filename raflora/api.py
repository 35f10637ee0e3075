"""Run a federation from Python: the calls behind ``raflora run``, ``raflora run --resume`` and
``raflora export``, with each round's metrics record as the round ends.

A config is a :class:`~raflora.config.Config`, a TOML file or a nested dict shaped like one (``{"run":
{"rounds": 2}, ...}``); ``overrides`` are ``--set`` style dotted keys (``{"run.rounds": 2,
"federation.method": "flexlora"}``). Every problem with them raises
:class:`~raflora.config.ConfigError` (a ``ValueError``) before any work starts. The run itself is the
CLI's: :func:`raflora.runtimes.run`, the same folder, checkpoints, numbers and adapter.

    result = run("configs/synthetic.toml", out="runs/s", on_round=print)
    for record in rounds("configs/synthetic.toml", out="runs/s2"): ...
    resume("runs/s", overrides={"run.rounds": 8})
    export("runs/s", "runs/s-adapter")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raflora.config import Config, ConfigError

ConfigSource = Config | str | os.PathLike | Mapping[str, Any]


def load(
    config: ConfigSource, overrides: Mapping[str, Any] | None = None, *, out: str | os.PathLike | None = None
) -> Config:
    """The checked :class:`Config` of ``config`` (a Config, a TOML file or a nested dict) with
    ``overrides`` (dotted keys) and ``out`` (``run.out``, the run folder) applied."""
    from raflora.config_io import apply_overrides, config_from_dict, config_to_dict, load_config

    changes = dict(overrides or {})
    if out is not None:
        changes["run.out"] = str(out)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, changes)
    if isinstance(config, Config):
        return config_from_dict(apply_overrides(config_to_dict(config), changes)) if changes else config
    if isinstance(config, Mapping):
        return config_from_dict(apply_overrides(dict(config), changes))
    raise ConfigError(f"config must be a Config, a TOML file path or a dict, got {type(config).__name__}")


@dataclass
class RunResult:
    """A run as it stands after :func:`run` or :func:`resume`: its ``config`` and every round's
    ``metrics`` record so far (the lines of ``metrics.jsonl``)."""

    config: Config
    metrics: list[dict]

    @property
    def folder(self) -> Path:
        """The run folder (``run.out``): config.toml, metrics.jsonl, checkpoints/, adapter/."""
        return Path(self.config.out)

    @property
    def finished(self) -> bool:
        """Whether every round of ``run.rounds`` has run (else :func:`resume` continues it)."""
        return bool(self.metrics) and self.metrics[-1].get("round") == self.config.run.rounds

    @property
    def aggregated(self) -> bool:
        """Whether some round aggregated at least one update (``raflora run`` exits 3 when none did)."""
        from raflora.runtimes.folder import aggregated_any

        return aggregated_any(self.metrics)

    @property
    def adapter(self) -> Path | None:
        """The global adapter the finished run wrote (a PEFT folder), None when there is none."""
        folder = self.folder / "adapter"
        return folder if self.finished and (folder / "adapter_config.json").is_file() else None

    def export(self, out: str | os.PathLike | None = None, *, merged: bool = False, rank: int | None = None) -> Path:
        """:func:`export` of this run."""
        return export(self.folder, out, merged=merged, rank=rank)


def run(
    config: ConfigSource | None = None,
    *,
    out: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    on_round: Callable[[dict], None] | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Run a federation (``raflora run``): ``config`` into ``out`` (default ``run.out``, else
    ``runs/<run.name>``). ``on_round(record)`` is called as each round ends, its checkpoint
    written; ``resume=FOLDER`` continues the run there (its own config.toml when ``config`` is
    None); ``overwrite`` replaces a run already in the folder; ``stop_after=k`` stops after round
    ``k``, resumable; ``log`` receives the CLI's lines (``log=print``); ``progress``: tqdm bars."""
    from raflora.runtimes import run as run_config
    from raflora.tasks.common import progress_bars

    config = _prepared(config, out, overrides, resume)
    with progress_bars(progress):
        metrics = run_config(
            config,
            resume=resume is not None,
            overwrite=overwrite,
            stop_after=stop_after,
            log=log,
            progress=progress,
            on_round=on_round,
        )
    return RunResult(config, metrics)


def rounds(
    config: ConfigSource | None = None,
    *,
    out: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """:func:`run`, one round at a time: yields each round's metrics record as the round ends (its
    checkpoint written). Leaving the loop early stops the run after that round; :func:`resume`
    continues it. The config is checked now, before the first round is asked for."""
    from raflora.runtimes import ROUNDS_UNDER_FLOWER
    from raflora.runtimes.embedded import federation_rounds

    config = _prepared(config, out, overrides, resume)
    if config.run.runtime == "flower":
        raise ConfigError(ROUNDS_UNDER_FLOWER)
    return federation_rounds(config, resume=resume is not None, overwrite=overwrite, stop_after=stop_after, log=log)


def resume(folder: str | os.PathLike, **options) -> RunResult:
    """Continue the run in ``folder`` from its last checkpoint (``raflora run --resume``), with its
    own config.toml; ``overrides={"run.rounds": n}`` runs it on to round ``n``. Takes :func:`run`'s
    other keywords."""
    return run(resume=folder, **options)


def export(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    merged: bool = False,
    rank: int | None = None,
    overwrite: bool = False,
) -> Path:
    """``raflora export``: the run's global model as a PEFT adapter folder of rank ``rank`` (default
    ``ranks.r_max``) or, ``merged=True``, as merged weights, into ``out`` (default
    ``FOLDER/export`` or ``FOLDER/merged``), which must be new or empty unless ``overwrite`` (an
    earlier export's files are replaced, no others). Returns the folder written."""
    from raflora.federation import export_run

    target = Path(out) if out is not None else Path(folder) / ("merged" if merged else "export")
    return Path(export_run(folder, target, merged=merged, rank=rank, overwrite=overwrite))


def _prepared(
    config: ConfigSource | None,
    out: str | os.PathLike | None,
    overrides: Mapping[str, Any] | None,
    resume: str | os.PathLike | None,
) -> Config:
    """The run's config, checked as ``raflora run`` checks it (runtime installed, device present)."""
    from raflora.client.device import resolve_device
    from raflora.runtimes import check_runtime

    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise ConfigError(f"give the run folder once: resume={str(resume)!r} or out={str(out)!r}")
        if config is None:
            # the run folder's config.toml is the config, with every override the run was started with
            saved = Path(resume) / "config.toml"
            if not saved.is_file():
                raise ConfigError(f"cannot resume: {str(resume)!r} holds no config.toml of a run")
            from raflora.config_io import load_config

            config = load_config(saved, {**dict(overrides or {}), "run.out": str(resume)}, legacy=True)
        else:
            config = load(config, overrides, out=resume)
    elif config is None:
        raise ConfigError("give a config (a Config, a TOML file or a dict), or resume=FOLDER")
    else:
        config = load(config, overrides, out=out)
    check_runtime(config)
    resolve_device(config.run.device)
    return config
