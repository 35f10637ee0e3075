"""``raflora compare``: one config run once per aggregation method (and seed), then a report.

Every run gets the same config (same seed, so the same clients, ranks, data and sampling) with only
``federation.method`` changed, into ``OUT/<method>/`` (a normal run folder, made by the config's
``run.runtime``); with ``seeds``, every method runs once per seed into ``OUT/<method>/seed-<k>/``
(``run.seed = k``: the same seeds for every method). The report goes to ``OUT/report/``. Every
config is built and checked, and every folder too, before the first run starts, so a bad name fails
at once instead of after an hour of other methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

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


def parse_seeds(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; None stays None (one run per method at the config's seed).
    ConfigError for a seed that is not a non-negative integer, a repeated seed or an empty list."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    parts = [p for p in parts if p]
    if not parts:
        raise ConfigError("--seeds lists no seed; give e.g. --seeds 0,1,2")
    seeds = []
    for part in parts:
        if not part.isdigit():
            raise ConfigError(f"--seeds: {part!r} is not a seed; give non-negative integers, e.g. --seeds 0,1,2")
        seeds.append(int(part))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds lists {repeated[0]} twice")
    return seeds


def check_overrides(overrides: Mapping[str, object], seeds: Sequence[int] | None, command: str = "compare") -> dict:
    """The ``--set`` values without Nones; ConfigError for the keys the command sets itself."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    refused = [("federation.method", "--methods"), ("run.out", "--out")] + ([("run.seed", "--seeds")] if seeds else [])
    for key, flag in refused:
        if key in overrides:
            raise ConfigError(f"{command} sets {key} for each run; use {flag} instead of --set {key}=...")
    return overrides


def run_configs(
    config_path: str | Path,
    folder: Path,
    methods: Sequence[str],
    seeds: Sequence[int] | None,
    overrides: Mapping[str, object],
    where: str = "",
    own: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, Config]:
    """One checked config per method (and seed), keyed by its folder below ``folder``: ``<method>`` or,
    with seeds, ``<method>/seed-<k>``. ``where`` names the sweep point in error messages; ``own``:
    per method, settings of its own on top of ``overrides`` (a tuned ``train.lr``)."""
    from raflora.config_io import load_config

    configs = {}
    for method in methods:
        for seed in seeds or [None]:
            name = method if seed is None else f"{method}/seed-{seed}"
            mine = (own or {}).get(method, {})
            values = {**overrides, **mine, "federation.method": method, "run.out": str(folder / name)}
            if seed is not None:
                values["run.seed"] = seed
            try:
                configs[name] = load_config(config_path, values)
            except ConfigError as err:
                raise ConfigError(f"{where}method {method}: {err}") from None
    return configs


def method_configs(
    config_path: str | Path,
    methods: Sequence[str],
    out: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    seeds: Sequence[int] | None = None,
    tuned: Mapping[str, Mapping] | None = None,
) -> tuple[Path, dict[str, Config]]:
    """The comparison folder and one checked config per method (``run.out = OUT/<method>``), or per
    method and seed (``OUT/<method>/seed-<k>``, ``run.seed = k``), keyed by that folder name.

    ``overrides`` are ``{"train.lr": 0.01}`` style values applied to every run; they may not set
    ``federation.method``, ``run.out`` (or ``run.seed`` with ``seeds``), which the comparison sets.
    ``tuned``: per method, its choice (:func:`raflora.tuning.choose`), whose settings win over
    ``overrides`` for that method.
    """
    from raflora.config_io import load_config

    overrides = check_overrides(overrides or {}, seeds)
    base = load_config(config_path, overrides)
    folder = Path(out) if out else Path(f"runs/{base.run.name}-compare")
    own = {m: choice["settings"] for m, choice in (tuned or {}).items()}
    return folder, run_configs(config_path, folder, methods, seeds, overrides, own=own)


def check_folders(configs: Mapping[str, Config], overwrite: bool) -> None:
    from raflora.federation.run_files import refuse_links
    from raflora.runtimes.folder import refuse_foreign

    for config in configs.values():
        out = Path(config.out)
        refuse_links(out)
        refuse_foreign(out)  # a user's config.toml where a run goes: refused before the first run
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
    seeds: Sequence[int] | None = None,
    reference: str | None = None,
    tuned: str | Path | None = None,
) -> tuple[Path, dict]:
    """Run ``config_path`` once per method into ``OUT/<method>/`` (with ``seeds``: once per method
    and seed into ``OUT/<method>/seed-<k>/``) and write ``OUT/report/``.

    Returns the report folder and the report's numbers (report.json's content); its paired
    differences are ``reference`` (default: the first method) minus each other method. ConfigError,
    before any run starts, for an unknown method, a reference not among the methods, a config that
    does not hold for one of the methods (e.g. fedit with mixed ranks), a runtime that is not
    installed or a folder that already holds a run (unless ``overwrite``).

    ``tuned``: a sweep folder; each method runs at the point of it chosen on validation
    (:func:`raflora.tuning.choose`), recorded in ``OUT/tuned.json``, and the report pairs the
    methods across the keys they chose.
    """
    from raflora.tuning import choose

    reference = check_reference(reference, methods)
    choices = choose(tuned, methods) if tuned is not None else None
    folder, configs = method_configs(config_path, methods, out, overrides, seeds, choices)
    return run_and_report(configs, folder, reference, overwrite=overwrite, log=log, progress=progress, tuned=choices)


def check_reference(reference: str | None, methods: Sequence[str]) -> str:
    if reference is None:
        return methods[0]
    if reference not in methods:
        raise ConfigError(f"--reference {reference!r} is not one of --methods ({', '.join(methods)})")
    return reference


def run_and_report(
    configs: Mapping[str, Config],
    folder: Path,
    reference: str,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    sweep: dict | None = None,
    tuned: dict | None = None,
) -> tuple[Path, dict]:
    """Check every folder and runtime, run every config in order, then write ``folder/report/``.
    ``sweep`` (a sweep's grid) is written to ``folder/sweep.json`` once the checks pass, ``tuned``
    (per-method choices) to ``folder/tuned.json``."""
    import json

    from raflora.report.destination import write_report_folder
    from raflora.report.tuned import TUNED_FILE
    from raflora.runtimes import check_runtime, run

    check_folders(configs, overwrite)
    for config in configs.values():
        check_runtime(config)
    if sweep is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sweep.json").write_text(json.dumps(sweep, indent=1) + "\n")
    if tuned is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TUNED_FILE).write_text(json.dumps(tuned, indent=1) + "\n")
    say = log or (lambda line: None)
    for k, (name, config) in enumerate(configs.items(), start=1):
        say(f"{'sweep' if sweep else 'compare'}: run {k}/{len(configs)}: {name}")
        run(config, overwrite=overwrite, log=log, progress=progress)  # run.runtime: embedded or flower
    report_folder = folder / "report"
    return report_folder, write_report_folder(
        [Path(c.out) for c in configs.values()],
        report_folder,
        reference=reference,
        sweep=None if sweep is None else (sweep, folder),
        tuned=tuned,
    )
