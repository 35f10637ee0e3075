"""raflora: federated LoRA fine-tuning with heterogeneous client ranks.

The aggregation math (``LoRAFactors``, ``aggregate``, ``energy_ratio``) imports torch only.
"""

from raflora.aggregation import AGGREGATORS, AggregationResult, NoValidUpdates, aggregate
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
