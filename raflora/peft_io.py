"""PEFT LoRA adapters in and out of raflora's math, for a user's own training loop.

In: :func:`update_from_peft` turns a PEFT model, a LoRA state dict or an adapter folder into a
:class:`~raflora.lora.ClientUpdate`. Out: :func:`load_into_peft` puts what a client starts from
next round into its PEFT model; :func:`peft_state_dict` and :func:`save_peft_adapter` write it as a
state dict or an adapter folder of a given rank that ``PeftModel.from_pretrained`` loads.

Module names are PEFT's module paths without the ``base_model.model.`` prefix (``fc1``,
``model.layers.0.self_attn.q_proj``): the key ``base_model.model.<module>.lora_A.weight`` is
module ``<module>``, as in raflora's own runs. Only ``nn.Linear`` LoRA layers convert: PEFT's
``lora_A.weight`` (``r x n``) is ``A`` and ``lora_B.weight`` (``m x r``) is ``B``, and the scale is
PEFT's own ``scaling``: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``
(``rank_pattern`` and ``alpha_pattern`` per module), so ``scale * B @ A`` is PEFT's
``get_delta_weight``. DoRA, LoRA biases, embedding and convolution LoRA layers are refused.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from raflora.aggregation.result import AggregationResult
from raflora.client.adapters import PREFIX
from raflora.lora import ClientUpdate, LoRAFactors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")
_REFUSED = {
    "lora_magnitude_vector": "DoRA (use_dora) adapters",
    "lora_embedding_": "LoRA on embedding layers",
}


# -- in: a client's update ---------------------------------------------------------------------
def update_from_peft(
    source: nn.Module | Mapping[str, Tensor] | str | os.PathLike,
    client_id: Hashable,
    num_examples: int,
    *,
    config: Any = None,
    scale: float | None = None,
    adapter: str | None = None,
) -> ClientUpdate:
    """A :class:`ClientUpdate` from ``source``: a PEFT model (its adapter ``adapter``, default the
    active one; scales from its layers), an adapter folder (``adapter_config.json`` and
    ``adapter_model.safetensors``) or a LoRA state dict (``get_peft_model_state_dict`` keys, or a
    model's ``state_dict()`` keys with the adapter name), which needs ``config`` (a ``LoraConfig``,
    its dict, or an adapter folder) or one ``scale`` for every module."""
    if isinstance(source, nn.Module):
        _only_for_state_dicts(config, scale, "a PEFT model")
        factors = _model_factors(source, adapter or _active(source))
    elif isinstance(source, (str, os.PathLike)):
        _only_for_state_dicts(config, scale, "an adapter folder")
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"adapter folder {str(folder)!r} does not exist")
        factors = _dict_factors(_read_weights(folder), read_config(folder), None, adapter)
    elif isinstance(source, Mapping):
        if (config is None) == (scale is None):
            raise ValueError("update_from_peft: a state dict needs config= (its LoraConfig) or scale=, one of them")
        factors = _dict_factors(source, None if config is None else read_config(config), scale, adapter)
    else:
        raise TypeError(
            f"update_from_peft: expected a PEFT model, a state dict or a folder, got {type(source).__name__}"
        )
    if not factors:
        raise ValueError(f"update_from_peft: client {client_id!r}: no LoRA factors (lora_A/lora_B weights) found")
    return ClientUpdate(client_id, factors, num_examples)


def _only_for_state_dicts(config, scale, what: str) -> None:
    if config is not None or scale is not None:
        raise ValueError(f"update_from_peft: {what} carries its own scaling; config= and scale= are for state dicts")


def _active(model: nn.Module) -> str:
    active = getattr(model, "active_adapter", "default")
    return active if isinstance(active, str) else active[0]


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every PEFT LoRA layer of ``model`` by module name (``base_model.model.`` stripped)."""
    from peft.tuners.lora import LoraLayer

    return {_module_name(name): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _module_name(name: str) -> str:
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def _model_factors(model: nn.Module, adapter: str) -> dict[str, LoRAFactors]:
    out = {}
    for module, layer in sorted(lora_layers(model).items()):
        if adapter in getattr(layer, "lora_embedding_A", {}):
            raise ValueError(f"module {module!r}: {_REFUSED['lora_embedding_']} do not convert")
        if adapter not in layer.lora_A:
            continue
        _check_layer(module, layer, adapter)
        A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        out[module] = LoRAFactors(A=_copy(A), B=_copy(B), scale=float(layer.scaling[adapter]))
    return out


def _check_layer(module: str, layer: nn.Module, adapter: str) -> None:
    if getattr(layer, "use_dora", {}).get(adapter, False):
        raise ValueError(f"module {module!r}: {_REFUSED['lora_magnitude_vector']} do not convert")
    if not isinstance(layer.lora_A[adapter], nn.Linear):
        raise ValueError(f"module {module!r}: only nn.Linear LoRA layers convert, got {type(layer.get_base_layer())}")
    if layer.lora_B[adapter].bias is not None:
        raise ValueError(f"module {module!r}: LoRA biases (lora_bias) do not convert")


def _dict_factors(
    state: Mapping[str, Tensor], config: dict | None, scale: float | None, adapter: str | None
) -> dict[str, LoRAFactors]:
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        if ".lora_" not in key:
            continue  # base weights, heads (modules_to_save)
        refused = next((what for mark, what in _REFUSED.items() if f".{mark}" in key), None)
        if refused or key.endswith(".bias"):
            raise ValueError(f"state dict key {key!r}: {refused or 'LoRA biases (lora_bias)'} do not convert")
        match = _KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"state dict key {key!r}: not a LoRA factor (<module>.lora_A.weight / lora_B.weight)")
        if adapter is not None and match["adapter"] not in (None, adapter):
            continue
        module, part = match["module"], match["part"]
        if part in parts.setdefault(module, {}):
            raise ValueError(f"module {module!r}: two lora_{part} weights (several adapters); pass adapter=")
        parts[module][part] = tensor
    out = {}
    for module, pair in sorted(parts.items()):
        missing = {"A", "B"} - set(pair)
        if missing:
            raise ValueError(f"module {module!r}: lora_{missing.pop()}.weight is missing")
        A, B = pair["A"], pair["B"]
        if A.dim() != 2 or B.dim() != 2:
            raise ValueError(f"module {module!r}: only nn.Linear LoRA layers convert (lora_A has {A.dim()} dims)")
        s = scale if config is None else peft_scale(config, module, int(A.shape[0]))
        out[module] = LoRAFactors(A=_copy(A), B=_copy(B), scale=float(s))
    return out


def _copy(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True)


def _read_weights(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        found = (
            " (adapter_model.bin: resave it with safe_serialization=True)"
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise ValueError(f"adapter folder {str(folder)!r} holds no {WEIGHTS_FILE}{found}")
    return load_file(str(path))


# -- the PEFT config ---------------------------------------------------------------------------
def read_config(config: Any) -> dict:
    """A LoRA config as a dict: from a ``LoraConfig``, a dict, or an adapter folder (or its json)."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        path = path / CONFIG_FILE if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"adapter folder {str(path.parent)!r} holds no {CONFIG_FILE}")
        data = json.loads(path.read_text())
    elif isinstance(config, Mapping):
        data = dict(config)
    elif hasattr(config, "to_dict"):
        data = config.to_dict()
    else:
        raise TypeError(f"expected a LoraConfig, a dict or an adapter folder, got {type(config).__name__}")
    peft_type = str(data.get("peft_type", "LORA")).rsplit(".", 1)[-1]
    if peft_type != "LORA":
        raise ValueError(f"adapter config: peft_type {peft_type!r} is not LORA")
    if data.get("use_dora"):
        raise ValueError(f"adapter config: {_REFUSED['lora_magnitude_vector']} do not convert")
    return data


def _pattern(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's per-module value: the first pattern key that matches the end of the module path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def peft_scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling of ``module`` at ``rank``: ``alpha / rank`` (``alpha / sqrt(rank)`` with
    ``use_rslora``), ``alpha`` from ``alpha_pattern`` or ``lora_alpha``. A ``rank`` other than the
    config's ``r`` (or ``rank_pattern``) for the module is refused."""
    expected = _pattern(config.get("rank_pattern"), module, config.get("r", 8))
    if int(expected) != rank:
        raise ValueError(f"module {module!r}: lora_A has rank {rank}, the adapter config says r = {expected}")
    alpha = float(_pattern(config.get("alpha_pattern"), module, config.get("lora_alpha", 8)))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# -- out: what a client starts from ------------------------------------------------------------
def _portable(result: AggregationResult, use: str) -> None:
    """Refuse methods whose client start is more than an adapter (``use`` says what to call)."""
    method = result.method
    if method.merges_into_base:
        raise ValueError(
            f"{method.name}: clients merge the global update into the base weight, which an adapter "
            f"alone does not carry; {use}"
        )
    if method.private:
        raise ValueError(f"{method.name}: each client keeps its own {method.private}; {use}")


def peft_state_dict(
    result: AggregationResult, rank: int, scale: float | Mapping[str, float], modules: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """``{"base_model.model.<module>.lora_A.weight": A, ...lora_B.weight: B}`` for a client of
    ``rank`` whose PEFT scaling is ``scale`` (one, or per module): ``result.client_factors(module,
    rank, scale)`` of every module (default ``result.modules``). ``set_peft_model_state_dict`` or
    :func:`save_peft_adapter` take it."""
    _portable(result, "use load_into_peft(model, result), which handles it")
    out = {}
    for module in result.modules if modules is None else modules:
        s = scale[module] if isinstance(scale, Mapping) else scale
        f = result.client_factors(module, rank, s)
        out[f"{PREFIX}{module}.lora_A.weight"] = f.A.detach().to("cpu").contiguous()
        out[f"{PREFIX}{module}.lora_B.weight"] = f.B.detach().to("cpu").contiguous()
    return out


def save_peft_adapter(
    result: AggregationResult, folder: str | os.PathLike, config: Any, rank: int | None = None, *, overwrite=False
) -> Path:
    """Write what a client of ``rank`` starts from as a PEFT adapter folder that
    ``PeftModel.from_pretrained(base_model, folder)`` loads: ``config`` (the client's
    ``LoraConfig``, its dict, or an adapter folder) with ``r = rank`` (default its ``r``) and its
    ``lora_alpha``, ``use_rslora`` and ``alpha_pattern``, so that PEFT's scaling is the scale the
    factors are split for. Existing adapter files are replaced only with ``overwrite=True``."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    data = read_config(config)
    rank = int(data.get("r", 8) if rank is None else rank)
    data = {**copy.deepcopy(data), "r": rank, "rank_pattern": {}}
    missing = [m for m in result.modules if not _targets(data.get("target_modules"), m)]
    if missing:
        raise ValueError(f"save_peft_adapter: target_modules {data.get('target_modules')!r} miss module {missing[0]!r}")
    state = peft_state_dict(result, rank, {m: peft_scale(data, m, rank) for m in result.modules})
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if (folder / name).exists() and not overwrite:
            raise ValueError(f"save_peft_adapter: {str(folder / name)!r} exists; pass overwrite=True to replace it")
    lora_config = LoraConfig(**{k: v for k, v in data.items() if k in LoraConfig.__dataclass_fields__})
    folder.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(str(folder))
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def _targets(target_modules: Any, module: str) -> bool:
    """Whether PEFT's ``target_modules`` (a list of name suffixes, a regex, or "all-linear")
    adapts ``module``."""
    if target_modules is None or target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in target_modules)


def load_into_peft(model: nn.Module, result: AggregationResult, adapter: str | None = None) -> list[str]:
    """Put what this client starts from next round into its PEFT ``model`` (adapter ``adapter``,
    default the active one), at each layer's own rank and scaling: ``result.client_factors``. For
    every method: flora and florist first merge the global update into the base weight, and a
    method whose clients keep a factor (FedSA-LoRA's ``B``) leaves that factor as the client
    trained it. Returns the modules set."""
    adapter = adapter or _active(model)
    layers = lora_layers(model)
    missing = [m for m in result.modules if m not in layers or adapter not in layers[m].lora_A]
    if missing:
        raise ValueError(f"load_into_peft: the model has no LoRA layer {missing[0]!r} (adapter {adapter!r})")
    method = result.method
    with torch.no_grad():
        for module in result.modules:
            layer = layers[module]
            _check_layer(module, layer, adapter)
            if method.merges_into_base:
                weight = layer.get_base_layer().weight
                weight.add_(result.delta(module).to(weight.device, weight.dtype))
            f = result.client_factors(module, int(layer.r[adapter]), float(layer.scaling[adapter]))
            for part, target in (("A", layer.lora_A[adapter].weight), ("B", layer.lora_B[adapter].weight)):
                if part != method.private:
                    target.copy_(getattr(f, part))
    return list(result.modules)
