"""raflora: federated LoRA fine-tuning with heterogeneous client ranks.

The aggregation math (``LoRAFactors``, ``aggregate``, ``energy_ratio``) imports torch only.
Importing raflora also registers its text-classification model (``raflora-meanpool``) with the
transformers Auto classes, lazily: nothing of transformers is imported until something else does.

A federation from Python (:mod:`raflora.api`: ``run``, ``rounds``, ``resume``, ``export``) and PEFT
adapters in and out of the math (:mod:`raflora.peft_io`: ``update_from_peft``, ``load_into_peft``,
``peft_state_dict``, ``save_peft_adapter``) are imported on first use.
"""

import importlib

from raflora.aggregation import AGGREGATORS, AggregationResult, NoValidUpdates, aggregate
from raflora.hf_auto import register_when_imported
from raflora.lora import (
    ClientUpdate,
    LoRAFactors,
    energy_by_partition,
    energy_ratio,
    fresh_factors,
    init_a,
    lora_scale,
    product_svd,
)

register_when_imported()

_LAZY = {
    "RunResult": "raflora.api",
    "export": "raflora.api",
    "resume": "raflora.api",
    "rounds": "raflora.api",
    "run": "raflora.api",
    "load_into_peft": "raflora.peft_io",
    "peft_state_dict": "raflora.peft_io",
    "save_peft_adapter": "raflora.peft_io",
    "update_from_peft": "raflora.peft_io",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raflora' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "AGGREGATORS",
    "AggregationResult",
    "ClientUpdate",
    "LoRAFactors",
    "NoValidUpdates",
    "RunResult",
    "aggregate",
    "energy_by_partition",
    "energy_ratio",
    "export",
    "fresh_factors",
    "init_a",
    "load_into_peft",
    "lora_scale",
    "peft_state_dict",
    "product_svd",
    "resume",
    "rounds",
    "run",
    "save_peft_adapter",
    "update_from_peft",
]
