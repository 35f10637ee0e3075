"""raflora: federated LoRA fine-tuning with heterogeneous client ranks.

The aggregation math (``LoRAFactors``, ``aggregate``, ``energy_ratio``) imports torch only.
Importing raflora also registers its text-classification model (``raflora-meanpool``) with the
transformers Auto classes, lazily: nothing of transformers is imported until something else does.
"""

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

__version__ = "0.1.0"

__all__ = [
    "AGGREGATORS",
    "AggregationResult",
    "ClientUpdate",
    "LoRAFactors",
    "NoValidUpdates",
    "aggregate",
    "energy_by_partition",
    "energy_ratio",
    "fresh_factors",
    "init_a",
    "lora_scale",
    "product_svd",
]
