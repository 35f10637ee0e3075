"""Where a client's model runs (``run.device``) and in which precision (``train.precision``).

``resolve_device`` turns the config's spelling into a ``torch.device`` and refuses one this
machine lacks as a ConfigError, so that a run on the wrong machine stops before it loads a model.
``autocast`` is the precision: ``float32`` is no context at all (not an autocast to float32),
so that a CPU float32 run computes exactly what it computed before the option existed.
"""

from __future__ import annotations

import contextlib
import re
from contextlib import AbstractContextManager as ContextManager

import torch

from raflora.config import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("float32", "bf16")

_CUDA = re.compile(r"cuda(?::(\d+))?")


def check_spelling(device: str, precision: str) -> None:
    """Refuse a device or precision that no machine has (checked with the rest of the config; a
    device this machine lacks is refused by :func:`resolve_device`, when a run starts here)."""
    if device not in ("auto", "cpu", "mps") and not _CUDA.fullmatch(device):
        raise ConfigError(f"run.device = {device!r} is not known; choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision = {precision!r} is not known; choose one of {', '.join(PRECISIONS)}")


def resolve_device(device: str) -> torch.device:
    """The torch device for ``run.device``: ``auto`` is the first CUDA device when there is one,
    else the CPU; a device that is not available here is a ConfigError."""
    check_spelling(device, "float32")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("run.device = 'mps' but this machine has no Apple MPS device; use 'auto' or 'cpu'")
        return torch.device("mps")
    index = _CUDA.fullmatch(device).group(1)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"run.device = {device!r} but torch sees no CUDA GPU here (torch {torch.__version__}); "
            "use 'auto' or 'cpu', or install a CUDA build of torch (docs/install.md)"
        )
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ConfigError(
            f"run.device = {device!r} but this machine has {count} CUDA "
            f"device{'' if count == 1 else 's'} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})"
        )
    return torch.device(device)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The context a forward pass runs in: bfloat16 autocast for ``bf16`` (on the CPU too, where
    processors with avx512_bf16 gain and others lose), nothing for ``float32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
