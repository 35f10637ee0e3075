"""The bare PEFT training loops the client overhead benchmark compares the runtime with, one per
task family, and the check that a bare loop and the runtime did the same work.

Each loop is what a user would write with PEFT alone: ``get_peft_model`` of the task model with a
``LoraConfig`` of the client's rank on the same target modules (``modules_to_save`` for a
classification head), batches built beforehand, ``AdamW``, the task's loss written out by hand,
backward, gradient clipping, step. Only the loss (and, for the vision task, keeping BatchNorm in
eval mode) differs between the tasks:

- text: cross-entropy of the classifier's logits;
- vision: cross-entropy of EfficientNet's logits, BatchNorm frozen (the task's
  ``freeze_batchnorm``: the backbone's running statistics are not part of any adapter);
- reasoning: the causal LM's own loss on labels that are -100 except on the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raflora.tasks.common import logits_of

PREFIX = "base_model.model."


def text_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
    return F.cross_entropy(logits, batch["labels"])


def vision_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch["inputs"]), batch["labels"])


def reasoning_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def train_mode(model: nn.Module) -> None:
    model.train()


def train_mode_frozen_batchnorm(model: nn.Module) -> None:
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@dataclass(frozen=True)
class BareLoop:
    """What differs between the tasks' bare loops: the loss and how the model is put in training mode."""

    loss: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]
    train_mode: Callable[[nn.Module], None] = train_mode


BARE_LOOPS = {
    "text": BareLoop(text_loss),
    "vision": BareLoop(vision_loss, train_mode_frozen_batchnorm),
    "reasoning": BareLoop(reasoning_loss),
}


def bare_peft_model(task, rank: int, alpha: float, dropout: float, scaling: str = "lora"):
    """The task model wrapped by PEFT for one rank, as a user would (adapter ``default``);
    ``scaling`` "lora" is PEFT's ``alpha / r``, "rslora" its ``use_rslora`` (``alpha / sqrt(r)``)."""
    from peft import LoraConfig, get_peft_model

    if scaling not in ("lora", "rslora"):
        raise ValueError(f"the bare loop has PEFT's own scalings only ('lora', 'rslora'), not {scaling!r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=task.target_modules,
        modules_to_save=task.head_modules or None,
        bias="none",
        use_rslora=scaling == "rslora",
    )
    return get_peft_model(task.load_model(), config)


def batch_indices(num_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of example indices: a fresh seeded permutation for every pass over the
    data (the order the runtime draws for a client with this seed)."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        if len(order) < min(batch_size, num_examples):
            order += torch.randperm(num_examples, generator=g).tolist()
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def bare_train(
    model,
    batches: Sequence[dict],
    lrs: Sequence[float],
    weight_decay: float,
    grad_clip: float,
    seed: int,
    loop: BareLoop = BARE_LOOPS["text"],
) -> list[float]:
    """A plain PEFT + torch training loop over pre-built batches, step ``i`` at learning rate
    ``lrs[i]`` (the run's schedule); returns the step losses."""
    torch.manual_seed(seed)  # dropout draws
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lrs[0], weight_decay=weight_decay)
    loop.train_mode(model)
    losses = []
    for batch, lr in zip(batches, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = loop.loss(model, batch)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


def _lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {n[len(PREFIX) :]: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _heads(model) -> dict:
    from peft.utils.other import ModulesToSaveWrapper

    return {n[len(PREFIX) :]: m for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)}


def load_bare(model, factors, head) -> None:
    """Put start factors and a head into a bare model (only for the agreement check)."""
    with torch.no_grad():
        for name, layer in _lora_layers(model).items():
            layer.lora_A["default"].weight.copy_(factors[name].A)
            layer.lora_B["default"].weight.copy_(factors[name].B)
        for name, wrapper in _heads(model).items():
            for key, p in wrapper.modules_to_save["default"].named_parameters():
                p.copy_(head[f"{name}.{key}"])


def bare_factors(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        n: (layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone())
        for n, layer in _lora_layers(model).items()
    }


def bare_head(model) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": p.detach().clone()
        for name, wrapper in _heads(model).items()
        for key, p in wrapper.modules_to_save["default"].named_parameters()
    }


def max_rel_diff(pairs) -> float:
    """The largest ``|x - y| / |y|`` (Frobenius norms) over ``(x, y)`` tensor pairs; 0 for none."""
    return max((float((x - y).norm() / y.norm().clamp_min(1e-30)) for x, y in pairs), default=0.0)


# The runtime and the bare loop run the same float32 operations on the same tensors in the same
# order (one adapter active; PEFT skips the others), so on one machine they agree bit for bit (0.0
# measured on all three tasks). The tolerances only leave room for a BLAS that splits a product
# differently elsewhere (a few ulp, grown over a few AdamW steps), and stay well below what a real
# difference gives on the tiny models (tests/benchmarks): BatchNorm left training, prompt tokens in
# the loss, a learning rate 1 % off put the mean losses 9e-5 to 4e-4 apart (relative) and the
# trained factors 2e-2 to 1.8 apart.
LOSS_RTOL = 1e-5
FACTOR_RTOL = 1e-4


def same_work(agreement: dict, loss_rtol: float = LOSS_RTOL, factor_rtol: float = FACTOR_RTOL) -> None:
    """Raise if the runtime and the bare loop did not do the same work (losses or trained factors
    and head apart by more than the tolerances)."""
    loss_gap = abs(agreement["runtime_loss"] - agreement["bare_loss"]) / max(abs(agreement["bare_loss"]), 1e-30)
    worst = max(agreement["factor_max_rel_err"], agreement["head_max_rel_err"])
    if not loss_gap <= loss_rtol or not worst <= factor_rtol:
        raise RuntimeError(
            f"the bare loop does not do the runtime's work: mean loss {agreement['runtime_loss']!r} vs "
            f"{agreement['bare_loss']!r} (relative {loss_gap:.2e}, tolerance {loss_rtol:g}); trained factors/head "
            f"apart by {worst:.2e} (tolerance {factor_rtol:g})"
        )
