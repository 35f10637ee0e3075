"""The run configuration: one typed object read from TOML and validated once, at the edge.

``load_config(path, overrides)`` reads the file, applies command-line overrides and returns a
:class:`Config` or raises :class:`ConfigError` with one readable line naming the problem. Inner
code receives the ``Config`` and never reads files or environment variables.
Defaults are documented in ``docs/usage.md`` (section "Config reference").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config problem, reported to the user as one line (exit code 2)."""


RANK_POLICIES = ("explicit", "cycle", "groups", "heavy_tail", "uniform", "homogeneous")
PARTITIONS = ("iid", "dirichlet", "by_key")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
RUNTIMES = ("embedded", "flower")


@dataclass
class RunConfig:
    name: str = "raflora"
    seed: int = 0
    rounds: int = 3
    out: str = ""                  # "" -> runs/<name>
    threads: int = 2               # torch threads, fixed so that numbers repeat exactly
    keep_checkpoints: int = 2      # most recent round checkpoints kept on disk
    runtime: str = "embedded"      # embedded (this process) | flower (Flower simulation; pip install .[flower])


@dataclass
class FederationConfig:
    num_clients: int = 10
    sample_fraction: float = 1.0   # share of clients sampled per round
    sample_count: int = 0          # > 0: exactly this many clients per round (overrides fraction)
    method: str = "raflora"
    tau: float = 0.9               # florist: energy threshold
    rank_levels: list[int] = field(default_factory=list)  # raflora: [] -> every rank in [ranks]
    sfed_alpha: float = 0.0        # fedsa: > 0 applies SFed-LoRA's scale alpha*sqrt(N/r)
    transport_dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class RanksConfig:
    policy: str = "cycle"
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    shares: list[float] = field(default_factory=list)   # groups: share of clients per rank
    rank: int = 8                  # homogeneous
    r_min: int = 2                 # uniform / heavy_tail lower bound
    r_max: int = 16                # the largest rank any client may have; export rank


@dataclass
class LoraConfig:
    alpha: float = 16.0
    scaling: str = "lora"          # lora: alpha/r | rslora: alpha/sqrt(r) | sfed: alpha*sqrt(N/r)
    dropout: float = 0.0


@dataclass
class TrainConfig:
    local_steps: int = 10          # optimiser steps per client per round (used when local_epochs = 0)
    local_epochs: int = 0          # > 0: passes over the client's data instead of local_steps
    optimizer: str = "adamw"
    lr: float = 5e-3
    lr_schedule: str = "constant"  # over all rounds: constant | cosine | linear (decay to 0)
    weight_decay: float = 0.0
    momentum: float = 0.9          # sgd only
    batch_size: int = 16
    grad_clip: float = 1.0         # max gradient norm; 0 disables


@dataclass
class PartitionConfig:
    scheme: str = "dirichlet"
    alpha: float = 0.5             # dirichlet concentration (smaller = more label skew)
    min_examples: int = 4          # dirichlet: every client gets at least this many examples


@dataclass
class TaskConfig:
    name: str = "synthetic"
    options: dict[str, Any] = field(default_factory=dict)  # every other key of [task]


@dataclass
class EvalConfig:
    batch_size: int = 64
    every: int = 1                 # evaluate every N rounds; the last round is always evaluated
    max_examples: int = 0          # > 0: a fixed seeded subsample of the test split


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    ranks: RanksConfig = field(default_factory=RanksConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def out(self) -> str:
        return self.run.out or f"runs/{self.run.name}"


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "federation": FederationConfig,
    "ranks": RanksConfig,
    "lora": LoraConfig,
    "train": TrainConfig,
    "partition": PartitionConfig,
    "task": TaskConfig,
    "eval": EvalConfig,
}
