"""The runs the client-side benchmarks measure: the demo config (all-MiniLM-L6-v2 on BBC News,
``configs/bbc_minilm.toml``) with a few keys overridden, or its toy version on the random "tiny"
encoder (same tokenizer and data, a 2-layer BERT of width 32) for ``--quick`` and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from raflora.config import Config
from raflora.config_io import load_config

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "bbc_minilm.toml"

# A few hundred articles and a small test split: seconds per run on the tiny encoder.
TOY = {"task.model": "tiny", "task.train_size": 240, "task.test_size": 40}


def demo_config(out: str | Path, quick: bool = False, overrides: Mapping[str, Any] | None = None) -> Config:
    """The demo config writing into ``out``; ``quick`` swaps in the tiny encoder on a data subset."""
    values: dict[str, Any] = {"run.out": str(out)}
    if quick:
        values.update(TOY)
    values.update(overrides or {})
    return load_config(DEMO_CONFIG, values)


def adapter_bytes(shapes: Mapping[str, tuple[int, int]], rank: int, bytes_per_value: int = 4) -> int:
    """Bytes of one client's LoRA factors of ``rank``: ``r (m + n)`` values per adapted module."""
    return sum(rank * (m + n) for m, n in shapes.values()) * bytes_per_value
