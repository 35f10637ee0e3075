"""One base model in memory with one PEFT LoRA adapter per distinct client rank.

Adapter ``"r8"`` serves every client of rank 8: before a client trains, its start factors are
copied into ``lora_A``/``lora_B`` and the global head into the adapter's ``modules_to_save`` copy.
PEFT's scaling of an adapter is set to the run's scale ``s`` for that rank (``lora_alpha = s r``,
``use_rslora=False``, and the scaling entry itself written to ``s``), so PEFT computes
``s * B @ A`` exactly as ``LoRAFactors`` does.

Module names are the task model's own (PEFT's ``base_model.model.`` prefix stripped).

The model lives on ``device`` (``run.device``); the factors and heads that go in and out are CPU
tensors, so that the server's state, the wire and the checkpoints never depend on where clients
trained. Forward passes run under :meth:`AdapterModel.autocast` (``train.precision``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from raflora.lora import LoRAFactors

PREFIX = "base_model.model."


def adapter_name(rank: int) -> str:
    return f"r{rank}"


class AdapterModel:
    """A task model wrapped by PEFT with adapters for ``ranks`` (``scales[rank]`` = ``s``)."""

    def __init__(
        self,
        model: nn.Module,
        target_modules: Sequence[str],
        head_modules: Sequence[str],
        ranks: Sequence[int],
        scales: Mapping[int, float],
        dropout: float = 0.0,
        device: torch.device | str = "cpu",
        precision: str = "float32",
    ):
        from peft import get_peft_model

        self.device = torch.device(device)
        self.precision = precision
        self.target_modules = list(target_modules)
        self.head_modules = list(head_modules)
        self.dropout = float(dropout)
        self.scales = {int(r): float(s) for r, s in scales.items()}
        ranks = sorted(set(int(r) for r in ranks))
        self.peft = get_peft_model(model, self._lora_config(ranks[0]), adapter_name=adapter_name(ranks[0]))
        for r in ranks[1:]:
            self.peft.add_adapter(adapter_name(r), self._lora_config(r))
        self.peft.to(self.device)  # a no-op on the CPU: the same tensors, the same numbers
        self.layers = self._lora_layers()
        self.heads = self._head_wrappers()
        for r in ranks:
            self._fix_scaling(r)
        self.ranks = ranks

    def autocast(self):
        """The context every forward pass runs in (bfloat16 autocast for ``precision = "bf16"``)."""
        from raflora.client.device import autocast

        return autocast(self.device, self.precision)

    def _lora_config(self, rank: int):
        from peft import LoraConfig

        return LoraConfig(
            r=rank,
            lora_alpha=self.scales[rank] * rank,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=self.head_modules or None,
            use_rslora=False,
            bias="none",
        )

    def _lora_layers(self) -> dict[str, nn.Module]:
        from peft.tuners.lora import LoraLayer

        return {
            name[len(PREFIX) :]: module for name, module in self.peft.named_modules() if isinstance(module, LoraLayer)
        }

    def _head_wrappers(self) -> dict[str, nn.Module]:
        from peft.utils.other import ModulesToSaveWrapper

        return {
            name[len(PREFIX) :]: module
            for name, module in self.peft.named_modules()
            if isinstance(module, ModulesToSaveWrapper)
        }

    def set_scale(self, rank: int, scale: float) -> None:
        """Train ``rank``'s adapter with scale ``scale`` from now on (a deployed Flower node takes
        the scale the server's factors carry: it depends on the whole federation)."""
        self.scales[int(rank)] = float(scale)
        self._fix_scaling(int(rank))

    def _fix_scaling(self, rank: int) -> None:
        for layer in self.layers.values():
            layer.scaling[adapter_name(rank)] = self.scales[rank]

    # -- module metadata ----------------------------------------------------------------------
    @property
    def modules(self) -> list[str]:
        return sorted(self.layers)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """``(m, n)`` = ``(out_features, in_features)`` of every adapted layer."""
        return {name: tuple(self.base_weight(name).shape) for name in self.modules}

    def base_weight(self, module: str) -> Tensor:
        return self.layers[module].get_base_layer().weight

    def base_weights(self, modules: Sequence[str] | None = None) -> dict[str, Tensor]:
        """CPU copies of the base weights of ``modules`` (all adapted modules by default)."""
        return {m: _cpu_copy(self.base_weight(m)) for m in (self.modules if modules is None else modules)}

    # -- per-client state ---------------------------------------------------------------------
    def activate(self, rank: int, train_a: bool = True) -> None:
        """Make ``rank``'s adapter the active one; only its factors (``A`` if ``train_a``) and its
        head copy are trainable."""
        name = adapter_name(rank)
        self.peft.set_adapter(name)
        for p in self.peft.parameters():
            p.requires_grad_(False)
        for layer in self.layers.values():
            layer.lora_B[name].weight.requires_grad_(True)
            layer.lora_A[name].weight.requires_grad_(train_a)
        for wrapper in self.heads.values():
            wrapper.modules_to_save[name].requires_grad_(True)

    def set_factors(self, rank: int, factors: Mapping[str, LoRAFactors]) -> None:
        name = adapter_name(rank)
        with torch.no_grad():
            for module, f in factors.items():
                layer = self.layers[module]
                layer.lora_A[name].weight.copy_(f.A)
                layer.lora_B[name].weight.copy_(f.B)

    def get_factors(self, rank: int) -> dict[str, LoRAFactors]:
        name, s = adapter_name(rank), self.scales[rank]
        return {
            module: LoRAFactors(A=_cpu_copy(layer.lora_A[name].weight), B=_cpu_copy(layer.lora_B[name].weight), scale=s)
            for module, layer in sorted(self.layers.items())
        }

    def set_head(self, rank: int | None, state: Mapping[str, Tensor]) -> None:
        """Load ``{"<head module>.<param>": tensor}`` into ``rank``'s head copy (``None``: the
        base model's own head, used when adapters are disabled)."""
        with torch.no_grad():
            for module, wrapper in self.heads.items():
                target = wrapper.original_module if rank is None else wrapper.modules_to_save[adapter_name(rank)]
                for key, p in target.named_parameters():
                    p.copy_(state[f"{module}.{key}"])

    def get_head(self, rank: int | None) -> dict[str, Tensor]:
        out = {}
        for module, wrapper in sorted(self.heads.items()):
            source = wrapper.original_module if rank is None else wrapper.modules_to_save[adapter_name(rank)]
            for key, p in source.named_parameters():
                out[f"{module}.{key}"] = _cpu_copy(p)
        return out

    # -- the global model ---------------------------------------------------------------------
    def add_to_base(self, deltas: Mapping[str, Tensor]) -> None:
        """``W += delta`` in the frozen base weights (flora/florist merge the round's update)."""
        with torch.no_grad():
            for module, delta in deltas.items():
                w = self.base_weight(module)
                w.add_(delta.to(w.device, w.dtype))

    @contextlib.contextmanager
    def global_model(self, deltas: Mapping[str, Tensor], head: Mapping[str, Tensor]) -> Iterator[nn.Module]:
        """The global model for evaluation: adapters off, ``W + delta`` in the base weights and the
        global head in place; the base weights are restored bit for bit afterwards. The block
        runs under :meth:`autocast`, so that evaluation computes in the training precision."""
        saved = {m: self.base_weight(m).detach().clone() for m in deltas}
        self.set_head(None, head)
        self.add_to_base(deltas)
        try:
            with self.peft.disable_adapter(), self.autocast():
                yield self.peft
        finally:
            with torch.no_grad():
                for module, w in saved.items():
                    self.base_weight(module).copy_(w)

    def load_base(self, weights: Mapping[str, Tensor]) -> None:
        """Replace base weights (a resumed flora/florist run restores its merged weights)."""
        with torch.no_grad():
            for module, w in weights.items():
                self.base_weight(module).copy_(w)

    def base_state_dict(self, base0: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The task model's own state dict, without PEFT's LoRA layers and head copies; ``base0``
        (module -> weight) replaces the adapted weights (flora/florist merged updates into them)."""
        out = {}
        for key, t in self.peft.get_base_model().state_dict().items():
            if ".lora_" in key or ".modules_to_save." in key:
                continue
            out[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = t
        for module, w in (base0 or {}).items():
            out[f"{module}.weight"] = w
        return out

    def save_adapter(
        self,
        folder,
        rank: int,
        scale: float,
        factors: Mapping[str, LoRAFactors],
        head: Mapping[str, Tensor],
        base0: Mapping[str, Tensor] | None = None,
    ) -> str | None:
        """Write a PEFT adapter folder (rank ``rank``, PEFT scaling ``scale``) holding ``factors``
        and ``head``; ``PeftModel.from_pretrained(task.load_model(), folder)`` loads it.

        ``task_type`` and ``base_model_name_or_path`` say what PEFT's ``AutoPeftModelFor...``
        classes need: a causal LM is its own folder; a model with ``save_base`` (the text task's
        mean-pooling classifier) writes ``folder/base`` (its config, and its weights as of
        ``base0`` when they have no source of their own) and points there. Returns
        ``base_model_name_or_path``."""
        folder = Path(folder)
        base = self.peft.get_base_model()
        name = "default"  # PEFT writes the "default" adapter at the folder's top level
        self.scales.setdefault(rank, scale)
        config = self._lora_config(rank)
        config.lora_alpha = scale * rank
        config.task_type = peft_task_type(base)
        if hasattr(base, "save_base"):
            base.save_base(folder / "base", state_dict=self.base_state_dict(base0))
            config.base_model_name_or_path = str((folder / "base").resolve())
        else:
            config.base_model_name_or_path = getattr(base, "name_or_path", None) or None
        self.peft.add_adapter(name, config)
        try:
            with torch.no_grad():
                for module, f in factors.items():
                    layer = self.layers[module]
                    layer.scaling[name] = scale
                    layer.lora_A[name].weight.copy_(f.A)
                    layer.lora_B[name].weight.copy_(f.B)
                for module, wrapper in self.heads.items():
                    for key, p in wrapper.modules_to_save[name].named_parameters():
                        p.copy_(head[f"{module}.{key}"])
            self.peft.save_pretrained(str(folder), selected_adapters=[name])
        finally:
            self.peft.delete_adapter(name)
        return config.base_model_name_or_path


def _cpu_copy(t: Tensor) -> Tensor:
    """A detached copy on the CPU (on the CPU: the same values as ``clone()``)."""
    return t.detach().to("cpu", copy=True)


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's ``task_type`` for a transformers model, by the library's class naming convention
    (``...ForCausalLM``, ``...ForSequenceClassification``); None for any other model."""
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return None
