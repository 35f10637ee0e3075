"""The global model of a run as a PEFT adapter folder, or as merged weights.

The global update of a module is ``W - W0``: the last round's aggregate for most methods, the
sum merged into the base for flora/florist. The adapter holds its best rank-``r`` approximation
(``r = ranks.r_max`` by default), split evenly between the factors:
``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``. ``--merged`` writes ``W0 + (W - W0)``
exactly, with the global head, as one safetensors file of the task model's state dict.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from raflora.client.adapters import AdapterModel
from raflora.federation.state import FederationState, checkpoints, latest_checkpoint, load_checkpoint
from raflora.lora import LoRAFactors, lora_scale, product_svd


def global_svd(state: FederationState, base0: Mapping[str, Tensor], module: str) -> tuple[Tensor, Tensor, Tensor]:
    """``U, S, V`` of the run's total update of ``module`` (``W - W0``)."""
    if state.base:
        U, S, Vh = torch.linalg.svd(state.base[module] - base0[module], full_matrices=False)
        return U, S, Vh.T
    B, A = state.delta[module]
    return product_svd(B, A)


def global_factors(state: FederationState, base0: Mapping[str, Tensor], rank: int, scale: float) -> dict[str, LoRAFactors]:
    out = {}
    for module in sorted(base0):
        m, n = base0[module].shape
        A, B = torch.zeros((rank, n)), torch.zeros((m, rank))
        if state.base or state.delta:
            U, S, V = global_svd(state, base0, module)
            k = min(rank, S.shape[0])
            root = (S[:k].float() / scale).sqrt()
            B[:, :k] = U[:, :k].float() * root
            A[:k] = root[:, None] * V[:, :k].T.float()
        out[module] = LoRAFactors(A, B, scale)
    return out


def write_adapter(model: AdapterModel, base0, state: FederationState, rank: int, scale: float, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    model.save_adapter(folder, rank, scale, global_factors(state, base0, rank, scale), state.head)


def write_merged(task, state: FederationState, folder: Path) -> Path:
    """``W0 + (W - W0)`` in every adapted layer and the global head, as ``model.safetensors``."""
    model = task.load_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            module, _, _ = name.rpartition(".")
            if state.base and module in state.base and name.endswith(".weight"):
                p.copy_(state.base[module])
            elif not state.base and module in state.delta and name.endswith(".weight"):
                B, A = state.delta[module]
                p.add_(B @ A)
            elif name in state.head:
                p.copy_(state.head[name])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def export_run(run_dir: str | Path, out: str | Path, merged: bool = False, rank: int | None = None) -> Path:
    """Export a run folder's latest checkpoint; returns the folder written."""
    from raflora.config import ConfigError
    from raflora.config_io import load_config
    from raflora.tasks import build_task

    run_dir, out = Path(run_dir), Path(out)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")  # the newest one that passes its checksums
    if not (run_dir / "config.toml").is_file() or checkpoint is None:
        unusable = " that can be used" if checkpoints(run_dir / "checkpoints") else ""
        raise ConfigError(f"{str(run_dir)!r} holds no checkpoint of a run{unusable}")
    config = load_config(run_dir / "config.toml", legacy=True)
    method = config.federation.method
    if method.private:
        raise ConfigError(f"{str(run_dir)!r}: {method.name} keeps each client's {method.private} on the client, so the "
                          "run has no global model to export")
    torch.set_num_threads(config.run.threads)
    task = build_task(config.task.name, **config.task.options)
    state = load_checkpoint(checkpoint)
    if merged:
        write_merged(task, state, out)
        shutil.copy(run_dir / "config.toml", out / "config.toml")
        return out
    rank = rank or config.ranks.r_max
    scale = lora_scale(config.lora.scaling, config.lora.alpha, rank, _clients(config))
    model = AdapterModel(task.load_model(), task.target_modules, task.head_modules, [rank], {rank: scale})
    base0 = {m: model.base_weight(m).detach().clone() for m in model.modules}
    write_adapter(model, base0, state, rank, scale, out)
    return out


def _clients(config) -> int:
    from raflora.federation.setup import sample_size

    return sample_size(config)
