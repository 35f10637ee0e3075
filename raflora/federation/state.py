"""The server state between rounds and its checkpoint on disk (safetensors + a small JSON).

A checkpoint after round ``k`` holds everything the server reads in round ``k + 1``: each rank's
start factors, the global head, the last global update's factors, the merged base weights (methods
that merge into the base) and the metrics so far. What clients keep for themselves (FedSA-LoRA's
``B``) is not the server's: the embedded runtime, which plays every client, stores it beside, in
``clients.safetensors`` (:func:`save_clients`). Every random draw of a round is derived from the
run seed, the round and the client, so no generator state needs saving.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from raflora.lora import LoRAFactors, LowRank

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
CLIENTS_TENSORS = "clients.safetensors"


@dataclass
class FederationState:
    round: int = 0                                                     # rounds completed
    starts: dict[int, dict[str, LoRAFactors]] = field(default_factory=dict)  # rank -> next start
    head: dict[str, Tensor] = field(default_factory=dict)
    delta: dict[str, LowRank] = field(default_factory=dict)            # last global update per module
    base: dict[str, Tensor] = field(default_factory=dict)              # merged base weights
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
    for module, (B, A) in state.delta.items():
        out[f"delta/{module}/B"], out[f"delta/{module}/A"] = B, A
    out.update({f"base/{module}": w for module, w in state.base.items()})
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


def save_checkpoint(state: FederationState, folder: Path, keep: int = 2,
                    kept: dict[int, dict[str, Tensor]] | None = None) -> Path:
    """Write ``folder/round_<k>`` atomically (temporary folder, then rename); keep the last ``keep``.
    ``kept``: the clients' own kept factors, written beside when a runtime plays the clients."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round_{state.round:04d}"
    tmp = folder / f".tmp_round_{state.round:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(state), str(tmp / STATE_TENSORS))
    scales = {str(r): {m: f.scale for m, f in fs.items()} for r, fs in state.starts.items()}
    meta = {"round": state.round, "scales": scales, "metrics": clean_json(state.metrics)}
    (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1))
    save_clients(kept or {}, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(folder.glob("round_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("round_*") if (p / STATE_JSON).is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path) -> FederationState:
    meta = json.loads((path / STATE_JSON).read_text())
    tensors = load_file(str(path / STATE_TENSORS))
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
            state.delta[rest] = LowRank(ab["B"], ab["A"])
        else:
            rank, module = rest.split("/", 1)
            scale = float(meta["scales"][rank][module])
            state.starts.setdefault(int(rank), {})[module] = LoRAFactors(ab["A"], ab["B"], scale)
    return state


def save_clients(kept: dict[int, dict[str, Tensor]], checkpoint: Path) -> None:
    """The clients' own kept factors (client -> module -> tensor) beside a server checkpoint."""
    tensors = {f"{client}/{module}": t.detach().cpu().contiguous() for client, ts in kept.items() for module, t in ts.items()}
    if tensors:
        save_file(tensors, str(checkpoint / CLIENTS_TENSORS))


def load_clients(checkpoint: Path) -> dict[int, dict[str, Tensor]]:
    path = checkpoint / CLIENTS_TENSORS
    kept: dict[int, dict[str, Tensor]] = {}
    if path.is_file():
        for key, t in load_file(str(path)).items():
            client, module = key.split("/", 1)
            kept.setdefault(int(client), {})[module] = t
    return kept
