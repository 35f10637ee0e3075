"""The run folder both runtimes write, and the console lines they print.

Output folder: ``config.toml`` (resolved), ``run.json`` (code, library versions and machine of
each session, :mod:`raflora.runtimes.provenance`), ``metrics.jsonl`` (one object per round),
``checkpoints/round_<k>/`` (state after round k) and ``adapter/`` (the final global adapter as a
PEFT folder). :func:`open_run`, :func:`record_round` and :func:`finish_run` are the steps around
the rounds, the same under every runtime.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from raflora.config import Config, ConfigError
from raflora.config_io import config_to_dict, config_to_toml
from raflora.federation.checkpoint_check import Expected
from raflora.federation.export import write_adapter
from raflora.federation.run_files import (
    ADAPTER,
    CONFIG,
    METRICS,
    REPLACED,
    RUN_FILES,
    append_line,
    refuse_links,
    replace_file,
)
from raflora.federation.setup import RunSetup, build_setup
from raflora.federation.state import (
    FederationState,
    clean_json,
    latest_checkpoint,
    load_checkpoint,
    load_clients,
    save_checkpoint,
)
from raflora.runtimes.provenance import record_session

# run.runtime: both runtimes give the same numbers, so either may continue the other's run
RESUMABLE = ("run.rounds", "run.out", "run.keep_checkpoints", "run.runtime", "eval.every")


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for section in sorted(set(a) | set(b)):
        for key in sorted(set(a.get(section, {})) | set(b.get(section, {}))):
            if f"{section}.{key}" in RESUMABLE:
                continue
            va, vb = a.get(section, {}).get(key), b.get(section, {}).get(key)
            if va != vb:
                out.append(f"{section}.{key}: {vb!r} in the run, {va!r} now")
    return out


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run: a metrics line or a checkpoint folder. ``config.toml`` alone
    (and an empty ``metrics.jsonl``) is a run killed before its first round: not a run yet."""
    metrics = out / METRICS
    if metrics.is_file():
        with metrics.open("rb") as fh:
            if any(line.strip() for line in fh):
                return True
    return _has_checkpoint(out)


def _has_checkpoint(out: Path) -> bool:
    return (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("round_*"))


def prepare_folder(config: Config, out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a folder holding a run (:func:`holds_run`) needs ``resume`` (same config)
    or ``overwrite``. With ``overwrite`` the old run stays as it is until the new one has been set
    up (data read, model loaded: :func:`open_run`), is then moved aside into ``out/.replaced`` and
    deleted once the new run has written its first checkpoint (:func:`record_round`); a new run
    that stops before that gives it back (:func:`settle_replaced`: the embedded runtime on its way
    out, and this function first, for a run that was killed or ran under Flower)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{str(out)!r} is a file, not a folder; choose another --out")
    refuse_links(out)
    settle_replaced(out)
    used = holds_run(out)
    refuse_foreign(out)
    if resume:
        saved = out / "config.toml"
        if not saved.is_file() or latest_checkpoint(out / "checkpoints") is None:
            raise ConfigError(f"cannot resume: {str(out)!r} holds no checkpoint of a run")
        from raflora.config_io import load_config

        diff = _differences(config_to_dict(config), config_to_dict(load_config(saved, legacy=True)))
        if diff:
            raise ConfigError(f"cannot resume {str(out)!r} with a different config: {'; '.join(diff)}")
    elif used and not overwrite:
        raise ConfigError(f"{str(out)!r} already holds a run; resume it with --resume {out} or pass --overwrite")


def refuse_foreign(out: Path) -> None:
    """ConfigError when ``out`` holds a file of a run's names that no raflora run wrote: a folder is
    raflora's once it has ``metrics.jsonl`` (written first, :func:`open_run`); without it, a
    ``config.toml`` (or any other run file) there is the user's and a run would overwrite it."""
    if not out.is_dir() or (out / METRICS).is_file():
        return
    present = [name for name in (*RUN_FILES, REPLACED) if (out / name).exists()]
    if present:
        raise ConfigError(
            f"{str(out)!r} holds {', '.join(present)} but no {METRICS}, so no raflora run wrote "
            f"{'them' if len(present) > 1 else 'it'}; choose another --out (a run never overwrites a file it did not write)"
        )


def _move_aside(out: Path) -> None:
    """The old run's files into ``out/.replaced`` (a new run is about to write the folder)."""
    aside = out / REPLACED
    aside.mkdir()
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).rename(aside / name)


def settle_replaced(out: Path) -> None:
    """Finish an ``--overwrite`` that stopped (failed or was killed): a new run that wrote a
    checkpoint replaces the old one, which is deleted; otherwise the new run's files are removed
    and the old run is put back as it was."""
    aside = out / REPLACED
    if not aside.is_dir():
        return
    if _has_checkpoint(out):
        shutil.rmtree(aside)
        return
    for name in RUN_FILES:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for item in aside.iterdir():
        item.rename(out / item.name)
    aside.rmdir()


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


def format_round(record: dict, rounds: int, metric: str) -> str:
    parts = [f"round {record['round']}/{rounds}"]
    if record.get(metric) is not None:
        parts.append(f"{metric} {record[metric]:.4f}  loss {record['loss']:.4f}")
    if record.get(f"val_{metric}") is not None:
        parts.append(f"val {metric} {record[f'val_{metric}']:.4f}  val loss {record['val_loss']:.4f}")
    if record.get("rho_rmin") is not None:
        parts.append(f"rho_rmin {record['rho_rmin']:.3f}")
    parts.append(f"up {_size(record['bytes_up'])}  down {_size(record['bytes_down'])}")
    parts.append(f"{record['seconds']:.1f} s")
    if record["rejected"]:
        parts.append(f"rejected {len(record['rejected'])}: {record['rejected'][0]['reason']}")
    return "  ".join(parts)


def last_round(config: Config, stop_after: int | None) -> int:
    return config.run.rounds if stop_after is None else min(stop_after, config.run.rounds)


def open_run(config: Config, resume: bool, say: Callable[[str], None]) -> tuple[RunSetup, FederationState]:
    """Build the run and its state (fresh, or from the last checkpoint) in a folder that
    :func:`prepare_folder` has checked; write ``config.toml`` and the metrics so far."""
    out = Path(config.out)
    f = config.federation
    say(
        f"raflora run: task {config.task.name}, method {f.method.name}, {f.num_clients} {plural(f.num_clients, 'client')}, "
        f"{config.run.rounds} {plural(config.run.rounds, 'round')} -> {out}"
    )
    setup = build_setup(config)
    state = _initial_state(setup, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and holds_run(out):  # prepare_folder let it through: --overwrite
        _move_aside(out)
    # metrics.jsonl first: it marks the folder as raflora's (refuse_foreign); each file is replaced whole
    replace_file(out / METRICS, "".join(json.dumps(m) + "\n" for m in state.metrics).encode())
    replace_file(out / CONFIG, config_to_toml(config).encode())
    record_session(out, setup.model.device, state.round)
    if resume:
        say(f"resuming {out} after round {state.round}")
    return setup, state


def record_round(
    setup: RunSetup, state: FederationState, record: dict, say: Callable[[str], None], kept: dict | None = None
) -> None:
    """Keep a finished round: its metrics line, its checkpoint (with ``kept``, the clients' own
    kept factors, when this runtime plays the clients), its summary line."""
    config, out = setup.config, Path(setup.config.out)
    state.metrics.append(clean_json(record))
    append_line(out / METRICS, json.dumps(state.metrics[-1]) + "\n")  # a failed write leaves no half line
    save_checkpoint(state, out / "checkpoints", config.run.keep_checkpoints, kept)
    if (out / REPLACED).is_dir():  # the new run has its first checkpoint: the run it replaces goes
        shutil.rmtree(out / REPLACED)
    say(format_round(record, config.run.rounds, setup.task.metric))


def finish_run(
    setup: RunSetup, state: FederationState, stop_after: int | None, say: Callable[[str], None]
) -> list[dict]:
    """After the last round: the global adapter (or, when stopped early, the line that says how to go on)."""
    config, out = setup.config, Path(setup.config.out)
    if state.round < config.run.rounds:
        say(f"stopped after round {state.round}; continue with: raflora run --resume {out}")
        return state.metrics
    if not aggregated_any(state.metrics):
        say(
            f"done: no round was aggregated in {config.run.rounds} {plural(config.run.rounds, 'round')} (every "
            "client's update was refused or every client failed; see the rejected reasons in "
            f"{out / 'metrics.jsonl'}), so there is no trained model and no adapter"
        )
        return state.metrics
    if setup.method.private:
        say(
            f"done: {setup.method.name} keeps each client's {setup.method.private} on the client, so there is no "
            f"global adapter; {_last_metric(state, setup.task.metric)}"
        )
        return state.metrics
    refuse_links(out, (ADAPTER,))
    write_adapter(
        setup.model,
        setup.base0,
        state,
        config.ranks.r_max,
        setup.scales[config.ranks.r_max],
        out / ADAPTER,
        task=setup.task,
        replace=True,  # the run's own adapter: an earlier one (a resumed run's) is replaced, other files stay
        legacy=True,
    )
    metric = setup.task.metric
    last = next((m for m in reversed(state.metrics) if m.get(metric) is not None), None)
    if last is not None:
        say(f"done: {metric} {last[metric]:.4f} after round {last['round']}; global adapter in {out / 'adapter'}")
    return state.metrics


def aggregated_any(metrics: list[dict]) -> bool:
    """Whether some round of the run aggregated at least one update."""
    return any(m.get("accepted") for m in metrics)


NOTHING_AGGREGATED = 3  # the exit code of a finished run in which no round was aggregated (2: bad input)


def exit_code(config: Config, metrics: list[dict]) -> int:
    """``raflora run``'s exit code for a run that went through: 3 when it finished every round and
    none was aggregated (an untrained model must not pass for a result), else 0."""
    finished = bool(metrics) and metrics[-1].get("round") == config.run.rounds
    return NOTHING_AGGREGATED if finished and not aggregated_any(metrics) else 0


def _last_metric(state: FederationState, metric: str) -> str:
    last = next((m for m in reversed(state.metrics) if m.get(metric) is not None), None)
    return "no evaluation" if last is None else f"mean {metric} of the clients' own models {last[metric]:.4f}"


def plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def expected_shapes(setup: RunSetup) -> Expected:
    """What a checkpoint of this run must hold: the model's shapes, the clients' ranks."""
    head = {key: tuple(t.shape) for key, t in setup.model.get_head(None).items()}
    return Expected(weights=dict(setup.shapes), head=head, ranks=frozenset(setup.ranks))


def _initial_state(setup: RunSetup, out: Path, resume: bool) -> FederationState:
    if not resume:
        return FederationState(starts=setup.fresh_starts(), head=setup.model.get_head(None))
    checkpoint = latest_checkpoint(out / "checkpoints", expected_shapes(setup))
    if checkpoint is None:
        raise ConfigError(f"cannot resume: {str(out)!r} holds no checkpoint that fits the run's model")
    state = load_checkpoint(checkpoint)
    if state.base:
        setup.model.load_base(state.base)
    return state


def resume_kept(config: Config, resume: bool, state: FederationState | None = None) -> dict:
    """The clients' own kept factors from the checkpoint the run resumed from (a runtime that plays
    the clients): that of ``state.round``, else the newest usable one."""
    if not resume:
        return {}
    folder = Path(config.out) / "checkpoints"
    if state is not None and (folder / f"round_{state.round:04d}").is_dir():
        return load_clients(folder / f"round_{state.round:04d}")
    return load_clients(latest_checkpoint(folder))
