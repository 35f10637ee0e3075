"""The run configuration: one typed object read from TOML and validated once, at the edge.

``load_config(path, overrides)`` reads the file, applies command-line overrides and returns a
:class:`Config` or raises :class:`ConfigError` with one readable line naming the problem. Inner
code receives the ``Config`` and never reads files or environment variables.

Each field holds its type, default and help (``setting``) here, and nowhere else: the config reader,
``docs/usage.md``'s config reference (``scripts/config_reference.py``) and the CLI help read them.
The method's own options live in its class (:mod:`raflora.aggregation`), under
``[federation.method]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raflora.aggregation import Method
from raflora.aggregation.raflora import RaFLoRA


class ConfigError(ValueError):
    """A config problem, reported to the user as one line (exit code 2)."""


RANK_POLICIES = ("explicit", "cycle", "groups", "heavy_tail", "uniform", "homogeneous")
PARTITIONS = ("iid", "dirichlet", "by_key")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
RUNTIMES = ("embedded", "flower")
EMPTY_PARTITIONS = ("keep", "drop")


def setting(default: Any = None, help: str = "", *, factory: Any = None) -> Any:
    """A config field with its help text."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    name: str = setting("raflora", "used for the default output folder runs/<name>")
    seed: int = setting(0, "fixes everything: partition, ranks, sampling, batches, dropout, inits")
    rounds: int = setting(3, "number of rounds")
    out: str = setting("", '"" -> runs/<name>; --out / --resume override')
    threads: int = setting(2, "torch threads; fixed because results depend on it in the last digits")
    keep_checkpoints: int = setting(2, "most recent round checkpoints kept")
    runtime: str = setting(
        "embedded", "embedded (this process) | flower (Flower simulation, same numbers; docs/flower.md)"
    )
    device: str = setting(
        "auto",
        "auto (the first CUDA GPU when torch sees one, else the CPU) | cpu | cuda | "
        "cuda:N | mps: where the model trains and evaluates; one that is missing stops the run",
    )


@dataclass
class FederationConfig:
    num_clients: int = setting(10, "clients in the federation; at most 1,000,000")
    sample_fraction: float = setting(1.0, "share of clients per round (rounded, at least 1)")
    sample_count: int = setting(0, "> 0: exactly this many clients per round instead")
    transport_dtype: str = setting("float32", "float32 | bfloat16 | float16: factors are really encoded and decoded")
    method: Method = setting(
        help="[federation.method]: name = the aggregation method, plus its own options (see below)", factory=RaFLoRA
    )
    max_norm_ratio: float = setting(
        10.0,
        "refuse an update whose norm (||s B A||, or the uploaded factor's) is "
        "more than this many times the round's median; 0 = off, applied from 3 updates",
    )
    dropout: float = setting(
        0.0, "share of the sampled clients that fail each round (seeded by run seed and round), in [0, 1)"
    )
    empty_partition: str = setting(
        "",
        "keep | drop: a rank partition no client of the round reaches keeps its "
        'previous global component, or loses it; "" = the method\'s rule (keep for '
        "carryover, built on the previous global update; drop for raflora and the "
        "baselines, as published)",
    )
    round_timeout: float = setting(
        3600.0, "Flower runtime: seconds a round waits for the clients' replies; then it closes with the replies it has"
    )


@dataclass
class RanksConfig:
    policy: str = setting("cycle", "explicit | cycle | groups | heavy_tail | uniform | homogeneous")
    ranks: list[int] = setting(
        help="explicit: one per client; cycle: repeated; groups: one per group", factory=lambda: [2, 4, 8, 16]
    )
    shares: list[float] = setting(
        help="groups: share of clients per rank, e.g. [0.1, 0.4, 0.5] for [64, 16, 4]", factory=list
    )
    rank: int = setting(8, "homogeneous: every client's rank")
    r_min: int = setting(
        2, "uniform: integers in [r_min, r_max]; heavy_tail: powers of two from r_min to r_max with probability ~ 1/r"
    )
    r_max: int = setting(16, "largest rank any client may have; the export rank")


@dataclass
class LoraConfig:
    alpha: float = setting(16.0, "LoRA alpha, in (0, 1e4]")
    scaling: str = setting(
        "lora", "lora: s = alpha/r | rslora: alpha/sqrt(r) | sfed: alpha*sqrt(N/r), N = clients per round"
    )
    dropout: float = setting(0.0, "LoRA dropout")


@dataclass
class TrainConfig:
    local_steps: int = setting(10, "optimiser steps per client per round (used when local_epochs = 0)")
    local_epochs: int = setting(0, "> 0: passes over the client's data instead of local_steps")
    optimizer: str = setting("adamw", "adamw | sgd")
    lr: float = setting(5e-3, "learning rate, in (0, 10]")
    lr_schedule: str = setting("constant", "constant | cosine | linear, over all rounds (decays to 0)")
    weight_decay: float = setting(0.0, "optimiser weight decay, in [0, 10]")
    momentum: float = setting(0.9, "sgd only; in [0, 1)")
    batch_size: int = setting(16, "examples per step")
    grad_clip: float = setting(1.0, "max gradient norm, 0 = off")
    precision: str = setting(
        "float32",
        "float32 | bf16: forward passes (training and evaluation) under bfloat16 "
        "autocast; faster on GPUs and on CPUs with avx512_bf16, slower on other CPUs; "
        "numbers change slightly",
    )


@dataclass
class PartitionConfig:
    scheme: str = setting("dirichlet", "iid | dirichlet (label skew) | by_key (the task's natural key)")
    alpha: float = setting(0.5, "dirichlet concentration: smaller = fewer classes per client; at most 1e6")
    min_examples: int = setting(4, "dirichlet: every client gets at least this many examples")


@dataclass
class TaskConfig:
    name: str = setting("synthetic", "text | vision | reasoning | user_text | synthetic")
    options: dict[str, Any] = setting(
        help="every other key of [task]: the task's options (see docs/tasks.md)", factory=dict
    )


@dataclass
class EvalConfig:
    batch_size: int = setting(64, "examples per evaluation batch")
    every: int = setting(1, "evaluate every N rounds; the last round is always evaluated")
    max_examples: int = setting(0, "> 0: a fixed seeded subsample of the test split")
    validation: float = setting(
        0.0,
        "share of the training examples held out (seeded, before the partition) as the server's "
        "validation set, in [0, 0.5]; > 0: every evaluated round is scored on it (val_<metric>, "
        "val_loss; best-round choices read it) and the test split only after the last round; "
        "0: the test split every evaluated round",
    )


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
