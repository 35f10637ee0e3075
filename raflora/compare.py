"""``raflora compare``: one config run once per aggregation method, then a report over the runs.

Every run gets the same config (same seed, so the same clients, ranks, data and sampling) with only
``federation.method`` changed, into ``OUT/<method>/`` (a normal run folder, made by the config's
``run.runtime``); the report goes to ``OUT/report/``. Every method's config is built and checked,
and every folder too, before the first run starts, so a bad name fails at once instead of after an
hour of other methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from raflora.config import Config, ConfigError

DEFAULT_METHODS = ("raflora", "flexlora", "zero_pad")


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"raflora,flexlora"`` -> ``["raflora", "flexlora"]``; ConfigError for an unknown, repeated or
    missing name."""
    from raflora.aggregation import AGGREGATORS

    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else [m.strip() for m in text]
    names = [m for m in names if m]
    if not names:
        raise ConfigError("--methods lists no method; give e.g. --methods raflora,flexlora,zero_pad")
    for name in names:
        if name not in AGGREGATORS:
            raise ConfigError(f"--methods: {name!r} is not a method; choose from {', '.join(AGGREGATORS)}")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ConfigError(f"--methods lists {repeated[0]!r} twice")
    return names


def method_configs(config_path: str | Path, methods: Sequence[str], out: str | Path | None = None,
                   overrides: Mapping[str, object] | None = None) -> tuple[Path, dict[str, Config]]:
    """The comparison folder and one checked config per method (``run.out = OUT/<method>``).

    ``overrides`` are ``{"train.lr": 0.01}`` style values applied to every run; they may not set
    ``federation.method`` or ``run.out``, which the comparison sets itself.
    """
    from raflora.config_io import load_config

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, flag in (("federation.method", "--methods"), ("run.out", "--out")):
        if key in overrides:
            raise ConfigError(f"compare sets {key} for each run; use {flag} instead of --set {key}=...")
    base = load_config(config_path, overrides)
    folder = Path(out) if out else Path(f"runs/{base.run.name}-compare")
    configs = {}
    for method in methods:
        try:
            configs[method] = load_config(
                config_path, {**overrides, "federation.method": method, "run.out": str(folder / method)})
        except ConfigError as err:
            raise ConfigError(f"method {method}: {err}") from None
    return folder, configs


def _check_folders(configs: Mapping[str, Config], overwrite: bool) -> None:
    for config in configs.values():
        out = Path(config.out)
        if not overwrite and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
            raise ConfigError(f"{str(out)!r} already holds a run; pass --overwrite to replace the comparison")


def compare(
    config_path: str | Path,
    methods: Sequence[str],
    out: str | Path | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> tuple[Path, dict]:
    """Run ``config_path`` once per method into ``OUT/<method>/`` and write ``OUT/report/``.

    Returns the report folder and the report's numbers (report.json's content). ConfigError, before
    any run starts, for an unknown method, a config that does not hold for one of the methods (e.g.
    fedit with mixed ranks), a runtime that is not installed or a folder that already holds a run
    (unless ``overwrite``).
    """
    from raflora.report import write_report
    from raflora.runtimes import check_runtime, run

    folder, configs = method_configs(config_path, methods, out, overrides)
    _check_folders(configs, overwrite)
    for config in configs.values():
        check_runtime(config)
    say = log or (lambda line: None)
    for k, (method, config) in enumerate(configs.items(), start=1):
        say(f"compare: method {k}/{len(configs)}: {method}")
        run(config, overwrite=overwrite, log=log, progress=progress)  # run.runtime: embedded or flower
    report_folder = folder / "report"
    return report_folder, write_report([Path(c.out) for c in configs.values()], report_folder)
