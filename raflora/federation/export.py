"""The global model of a run as a PEFT adapter folder, or as merged weights; each with a model card.

The global update of a module is ``W - W0``: the last round's aggregate for most methods, the
sum merged into the base for flora/florist. The adapter holds its best rank-``r`` approximation
(``r = ranks.r_max`` by default), split evenly between the factors:
``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``. ``--merged`` writes ``W0 + (W - W0)``
exactly, with the global head: a transformers model (text, reasoning) as a ``save_pretrained``
folder with its tokenizer, any other model as ``model.safetensors`` of its state dict.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from raflora.client.adapters import AdapterModel, peft_task_type
from raflora.federation.model_card import CardFacts, run_facts, write_card
from raflora.federation.state import FederationState, checkpoints, latest_checkpoint, load_checkpoint
from raflora.lora import LoRAFactors, lora_scale, product_svd


def global_svd(state: FederationState, base0: Mapping[str, Tensor], module: str) -> tuple[Tensor, Tensor, Tensor]:
    """``U, S, V`` of the run's total update of ``module`` (``W - W0``)."""
    if state.base:
        U, S, Vh = torch.linalg.svd(state.base[module] - base0[module], full_matrices=False)
        return U, S, Vh.T
    delta = state.delta[module]
    return product_svd(delta.B, delta.A)


def global_factors(
    state: FederationState, base0: Mapping[str, Tensor], rank: int, scale: float
) -> dict[str, LoRAFactors]:
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
        out[module] = LoRAFactors(A=A, B=B, scale=scale)
    return out


def write_adapter(
    model: AdapterModel, base0, state: FederationState, rank: int, scale: float, folder: Path, *, task=None
) -> None:
    """The PEFT adapter folder of the run's global model, with its model card (``task`` names the
    metric; without it the card takes the metric from the records)."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    base_path = model.save_adapter(folder, rank, scale, global_factors(state, base0, rank, scale), state.head, base0)
    base = model.peft.get_base_model()
    facts = CardFacts(
        task_type=peft_task_type(base),
        base=base_path,
        source=weights_source(base),
        rounds=state.round,
        rank=rank,
        scale=scale,
        target_modules=model.target_modules,
        head_modules=model.head_modules,
        **run_facts(state.metrics, getattr(task, "metric", None)),
    )
    write_card(folder, facts)


def weights_source(model) -> str | None:
    """Where a task model's pretrained weights come from (a Hub id or a path), if anywhere."""
    config = getattr(model, "config", None)
    return getattr(config, "encoder_name_or_path", None) or getattr(model, "name_or_path", None) or None


def write_merged(task, state: FederationState, folder: Path) -> Path:
    """``W0 + (W - W0)`` in every adapted layer and the global head: ``save_pretrained`` (weights,
    config, tokenizer) for a transformers model, else ``model.safetensors``; and a model card."""
    model = task.load_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            module, _, _ = name.rpartition(".")
            if state.base and module in state.base and name.endswith(".weight"):
                p.copy_(state.base[module])
            elif not state.base and module in state.delta and name.endswith(".weight"):
                p.add_(state.delta[module].dense())
            elif name in state.head:
                p.copy_(state.head[name])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)  # ties shared weights (SmolLM2's lm_head) instead of refusing them
        if getattr(task, "tokenizer", None) is not None:
            task.tokenizer.save_pretrained(folder)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    facts = CardFacts(
        task_type=peft_task_type(model),
        base=getattr(model, "name_or_path", None) or None,
        source=weights_source(model),
        rounds=state.round,
        head_modules=list(task.head_modules),
        merged=True,
        **run_facts(state.metrics, task.metric),
    )
    write_card(folder, facts)
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
        raise ConfigError(
            f"{str(run_dir)!r}: {method.name} keeps each client's {method.private} on the client, so the "
            "run has no global model to export"
        )
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
    base0 = model.base_weights()
    write_adapter(model, base0, state, rank, scale, out, task=task)
    return out


def _clients(config) -> int:
    from raflora.federation.setup import sample_size

    return sample_size(config)
