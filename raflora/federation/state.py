"""The server state between rounds and its checkpoint on disk (safetensors + a small JSON).

A checkpoint after round ``k`` holds everything the server reads in round ``k + 1``: each rank's
start factors, the global head, the last global update's factors, the merged base weights (methods
that merge into the base) and the metrics so far. What clients keep for themselves (FedSA-LoRA's
``B``) is not the server's: the embedded runtime, which plays every client, stores it beside, in
``clients.safetensors`` (:func:`load_clients`). Every random draw of a round is derived from the
run seed, the round and the client, so no generator state needs saving.

Checkpoints carry checksums and are written durably (:mod:`raflora.federation.checkpoint_files`);
:func:`latest_checkpoint` skips, with a warning, any newer one that fails them or means nothing
(:mod:`raflora.federation.checkpoint_check`), so resume and export continue from the newest
checkpoint that can be trusted.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from raflora.federation.checkpoint_check import Expected, metrics_rounds, state_problem
from raflora.federation.checkpoint_files import MANIFEST, CorruptCheckpoint, read_folder, write_folder
from raflora.lora import LoRAFactors, LowRank

logger = logging.getLogger(__name__)

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
CLIENTS_TENSORS = "clients.safetensors"
METRICS_FILE = "metrics.jsonl"  # the run folder's, beside checkpoints/: a checkpoint may not be ahead of it


@dataclass
class FederationState:
    round: int = 0  # rounds completed
    starts: dict[int, dict[str, LoRAFactors]] = field(default_factory=dict)  # rank -> next start
    head: dict[str, Tensor] = field(default_factory=dict)
    delta: dict[str, LowRank] = field(default_factory=dict)  # last global update per module
    base: dict[str, Tensor] = field(default_factory=dict)  # merged base weights
    metrics: list[dict] = field(default_factory=list)


def clean_json(value):
    """NaN and infinities become null, so metrics files are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def _tensors(state: FederationState) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for rank, factors in state.starts.items():
        for module, f in factors.items():
            out[f"start/{rank}/{module}/A"] = f.A
            out[f"start/{rank}/{module}/B"] = f.B
    out.update({f"head/{key}": t for key, t in state.head.items()})
    for module, delta in state.delta.items():
        out[f"delta/{module}/B"], out[f"delta/{module}/A"] = delta.B, delta.A
    out.update({f"base/{module}": w for module, w in state.base.items()})
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


def save_checkpoint(
    state: FederationState, folder: Path, keep: int = 2, kept: dict[int, dict[str, Tensor]] | None = None
) -> Path:
    """Write ``folder/round_<k>`` with a manifest of checksums, durably and atomically (temporary
    folder, fsync, rename); keep the last ``keep`` by round number. ``kept``: the clients' own kept
    factors, written beside when a runtime plays the clients."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round_{state.round:04d}"
    tmp = folder / f".tmp_round_{state.round:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    scales = {str(r): {m: f.scale for m, f in fs.items()} for r, fs in state.starts.items()}
    meta = {"round": state.round, "scales": scales, "metrics": clean_json(state.metrics)}
    files = {STATE_TENSORS: save(_tensors(state)), STATE_JSON: json.dumps(meta, indent=1).encode()}
    clients = {
        f"{client}/{module}": t.detach().cpu().contiguous()
        for client, ts in (kept or {}).items()
        for module, t in ts.items()
    }
    if clients:
        files[CLIENTS_TENSORS] = save(clients)
    # a checkpoint of this round already there (one resume skipped as unusable) stays until the new one is in place
    old = folder / f".old_round_{state.round:04d}"
    shutil.rmtree(old, ignore_errors=True)
    if final.is_dir():
        final.rename(old)
    try:
        write_folder(tmp, final, files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: the half-written folder goes, the older ones stay
        if old.is_dir() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints(folder)[:-keep]:
        # never the one just written: a later round's folder that resume fell back past (corrupt)
        # still sorts after it until that round is written again
        if stale != final:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoint_round(path: Path) -> int | None:
    """The round of a ``round_<k>`` folder name, None for any other name."""
    match = re.fullmatch(r"round_(\d+)", path.name)
    return int(match.group(1)) if match else None


def checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders in ``folder``, oldest round first. By number: as text, round_10000
    sorts before round_9999 and rotation deleted each new checkpoint right after writing it."""
    found = [p for p in folder.glob("round_*") if p.is_dir() and checkpoint_round(p) is not None]
    return sorted(found, key=checkpoint_round)


def latest_checkpoint(folder: Path, expected: Expected | None = None) -> Path | None:
    """The newest checkpoint that passes its checksums and means something (finite values, its
    round agreeing with its folder, its metrics and the run's ``metrics.jsonl``; with ``expected``,
    the run model's shapes: :mod:`raflora.federation.checkpoint_check`). Each newer one that does
    not is reported (a warning naming it and why) and skipped. A checkpoint without a manifest is
    skipped too when another one of the folder has one (its manifest was lost, not never written);
    a folder whose checkpoints all lack one (an older raflora's) is read unverified. None when
    there is none."""
    found = checkpoints(folder)
    manifests = any((path / MANIFEST).is_file() for path in found)
    recorded = metrics_rounds(folder.parent / METRICS_FILE)
    skipped = []
    for path in reversed(found):
        try:
            if manifests and not (path / MANIFEST).is_file():
                raise CorruptCheckpoint(f"its {MANIFEST} is missing, so its files cannot be verified")
            state = load_checkpoint(path)
            problem = state_problem(state, checkpoint_round(path), recorded, expected)
            if problem is None:
                problem = _clients_problem(path)
            if problem:
                raise CorruptCheckpoint(problem)
        except CorruptCheckpoint as err:
            _report(f"checkpoint {path} is unusable: {err}")
            skipped.append(path.name)
            continue
        if skipped:
            _report(f"falling back to checkpoint {path} (skipped {', '.join(skipped)})")
        return path
    return None


def _clients_problem(path: Path) -> str | None:
    for client, tensors in load_clients(path).items():
        for module, t in tensors.items():
            if t.is_floating_point() and not bool(t.isfinite().all()):
                return f"client {client}'s kept {module} holds NaN or infinite values"
    return None


def load_checkpoint(path: Path) -> FederationState:
    """The state saved in ``path``; CorruptCheckpoint when a file is missing, fails its checksum
    or does not parse. A folder without a manifest (written before checkpoints carried
    checksums) is loaded unverified, with a note."""
    files, verified = read_folder(path, [STATE_JSON, STATE_TENSORS])
    if not verified:
        _report(f"checkpoint {path} has no {MANIFEST} (written by an older raflora): loaded without verifying it")
    try:
        meta = json.loads(files[STATE_JSON])
        tensors = load(files[STATE_TENSORS])
        return _state(meta, tensors)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, SafetensorError) as err:
        raise CorruptCheckpoint(f"its files do not parse ({type(err).__name__}: {err})") from None


def _report(message: str) -> None:
    """Say a checkpoint problem once per process: resume looks for the latest checkpoint twice."""
    if message not in _REPORTED:
        _REPORTED.add(message)
        logger.warning("warning: %s", message)


_REPORTED: set[str] = set()


def _state(meta: dict, tensors: dict[str, Tensor]) -> FederationState:
    state = FederationState(round=int(meta["round"]), metrics=list(meta["metrics"]))
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        kind, rest = key.split("/", 1)
        if kind == "head":
            state.head[rest] = t
        elif kind == "base":
            state.base[rest] = t
        elif kind == "own_b":  # written by versions whose server kept FedSA's B; the clients keep it now
            continue
        else:  # start/<rank>/<module>/<A|B> and delta/<module>/<A|B>
            pairs.setdefault(f"{kind}/{rest[:-2]}", {})[rest[-1]] = t
    for key, ab in pairs.items():
        kind, rest = key.split("/", 1)
        if kind == "delta":
            state.delta[rest] = LowRank(A=ab["A"], B=ab["B"])
        else:
            rank, module = rest.split("/", 1)
            scale = float(meta["scales"][rank][module])
            state.starts.setdefault(int(rank), {})[module] = LoRAFactors(A=ab["A"], B=ab["B"], scale=scale)
    return state


def load_clients(checkpoint: Path) -> dict[int, dict[str, Tensor]]:
    """The clients' own kept factors (client -> module -> tensor) saved beside a server checkpoint
    (verified against its manifest like the state); ``{}`` when the run kept none."""
    if not (checkpoint / CLIENTS_TENSORS).is_file():
        return {}
    files, _ = read_folder(checkpoint, [CLIENTS_TENSORS])
    kept: dict[int, dict[str, Tensor]] = {}
    try:
        for key, t in load(files[CLIENTS_TENSORS]).items():
            client, module = key.split("/", 1)
            kept.setdefault(int(client), {})[module] = t
    except (ValueError, SafetensorError) as err:
        raise CorruptCheckpoint(f"{CLIENTS_TENSORS} does not parse ({type(err).__name__}: {err})") from None
    return kept
