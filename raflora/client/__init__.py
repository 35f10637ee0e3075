"""Local training of a PEFT LoRA model of a given rank: one base model, adapters swapped."""

from raflora.client.adapters import AdapterModel
from raflora.client.train import LocalResult, train_local

__all__ = ["AdapterModel", "LocalResult", "train_local"]
