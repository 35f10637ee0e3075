"""Sizes a run cannot have, refused once the base model is loaded and before anything is built on
it: a rank above the smaller side of a matrix it adapts, examples longer than the model's
positions, and a run whose memory estimate is above this machine's RAM (one line, exit 2).

The memory estimate counts what must be in memory at once, roughly and from below, so that a run it
refuses cannot fit (a run it lets through may still not):

    base model parameters and buffers (their own dtypes)
  + 4 bytes x sum over adapted modules of (m + n) x (the adapters' ranks, 3 copies each for the
    weights and AdamW's two moments, + r_max x the clients of a round: the uploads the server holds)
  + 4 bytes x max(train, eval batch) x tokens per example x sum over linear layers of their outputs
    x 2 (the activations a backward pass keeps, and their gradients)
"""

from __future__ import annotations

import math
import os

from torch import nn

from raflora.config import Config, ConfigError
from raflora.tasks.base import Task

FLOAT32 = 4


def adapted_shapes(model: nn.Module, target_modules: list[str]) -> dict[str, tuple[int, int]]:
    """``(m, n)`` of every layer PEFT would adapt (its own matching of ``target_modules``), read
    from the unwrapped model: a weight of more than 2 dimensions is its output by the rest."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=list(target_modules))
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name and weight is not None and weight.dim() >= 2 and check_target_module_exists(config, name):
            out[name] = (int(weight.shape[0]), int(math.prod(weight.shape[1:])))
    return out


def check_ranks_fit(config: Config, shapes: dict[str, tuple[int, int]]) -> None:
    """ConfigError when ``ranks.r_max`` (every client's rank is at most it) is above min(m, n) of
    an adapted module: a rank-r factorisation of an m x n matrix has r <= min(m, n)."""
    if not shapes:
        return
    name, (m, n) = min(shapes.items(), key=lambda item: (min(item[1]), item[0]))
    r_max = config.ranks.r_max
    if r_max > min(m, n):
        raise ConfigError(
            f"ranks.r_max = {r_max} is above min(m, n) = {min(m, n)} of module {name!r} ({m} x {n}); "
            "a LoRA rank cannot exceed the smaller side of the matrix it adapts"
        )


def memory_estimate(config: Config, task: Task, model: nn.Module, shapes: dict[str, tuple[int, int]], ranks) -> dict:
    """The estimate of this module's docstring, in bytes, by part: ``model``, ``factors``,
    ``activations`` and their ``total``. ``ranks``: the clients' ranks."""
    from raflora.federation.sampling import sample_size

    params = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    sides = sum(m + n for m, n in shapes.values())
    held = 3 * sum(set(ranks)) + config.ranks.r_max * sample_size(config)
    factors = FLOAT32 * sides * held
    outputs = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    batch = max(config.train.batch_size, config.eval.batch_size)
    activations = FLOAT32 * batch * task.tokens_per_example() * outputs * 2
    return {"model": params, "factors": factors, "activations": activations, "total": params + factors + activations}


def machine_ram() -> int:
    """This machine's physical memory in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_memory(config: Config, task: Task, model: nn.Module, shapes, ranks, ram: int | None = None) -> None:
    """ConfigError when the memory estimate is above ``ram`` (default: this machine's)."""
    ram = machine_ram() if ram is None else ram
    need = memory_estimate(config, task, model, shapes, ranks)
    if ram and need["total"] > ram:
        raise ConfigError(
            f"the run needs about {gib(need['total'])} of memory (model {gib(need['model'])}, factors "
            f"{gib(need['factors'])}, activations {gib(need['activations'])}; docs/reliability.md), "
            f"more than this machine's {gib(ram)} of RAM"
        )


def check_sizes(config: Config, task: Task, model: nn.Module, ranks) -> None:
    """Every size check of this module on the loaded base ``model``, before anything is built on it."""
    try:
        task.check_positions(model)
    except ValueError as err:
        raise ConfigError(f"task.{err}") from None
    shapes = adapted_shapes(model, task.target_modules)
    check_ranks_fit(config, shapes)
    check_memory(config, task, model, shapes, ranks)
