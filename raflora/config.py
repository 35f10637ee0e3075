"""The run configuration: one typed schema (pydantic models) read from TOML and checked once, at the edge.

``load_config(path, overrides)`` (:mod:`raflora.config_io`) reads the file, applies command-line
overrides and returns a :class:`Config` or raises :class:`ConfigError` with one readable line
naming the key. Inner code receives the ``Config`` and never reads files or environment variables.

Each key's type, default, bounds and help (``setting``) are here and nowhere else: the config
reader, ``raflora schema`` (the JSON Schema), ``docs/usage.md``'s config reference and the CLI help
read them. ``[federation.method]`` is a union of one model per method discriminated by ``name``,
each built from the method class's own options (:mod:`raflora.option_models`); ``[task]`` likewise
from each task's constructor. Every model refuses a key it does not know (``extra = "forbid"``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import reduce
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, WrapValidator, field_validator
from pydantic_core import PydanticCustomError

from raflora.aggregation import Method
from raflora.aggregation.raflora import RaFLoRA
from raflora.lora import SCALINGS
from raflora.option_models import STRICT, method_models, task_models
from raflora.wire import TRANSPORT_DTYPES


class ConfigError(ValueError):
    """A config problem, reported to the user as one line (exit code 2)."""


RANK_POLICIES = ("explicit", "cycle", "groups", "heavy_tail", "uniform", "homogeneous")
PARTITIONS = ("iid", "dirichlet", "by_key")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
RUNTIMES = ("embedded", "flower")


def setting(default: Any = None, help: str = "", *, factory: Any = None, **bounds: Any) -> Any:
    """A config key with its help text and bounds (``gt``, ``ge``, ``lt``, ``le``: ``Field``'s keywords)."""
    if factory is not None:
        return Field(default_factory=factory, description=help, **bounds)
    return Field(default=default, description=help, **bounds)


class Section(BaseModel):
    model_config = STRICT


class RunConfig(Section):
    name: str = setting("raflora", "used for the default output folder runs/<name>")
    seed: int = setting(0, "fixes everything: partition, ranks, sampling, batches, dropout, inits")
    rounds: int = setting(3, "number of rounds", gt=0)
    out: str = setting("", '"" -> runs/<name>; --out / --resume override')
    threads: int = setting(2, "torch threads; fixed because results depend on it in the last digits", gt=0)
    keep_checkpoints: int = setting(2, "most recent round checkpoints kept", gt=0)
    runtime: Literal[RUNTIMES] = setting(  # type: ignore[valid-type]
        "embedded", "embedded (this process) | flower (Flower simulation, same numbers; docs/flower.md)"
    )
    device: str = setting(
        "auto",
        "auto (the first CUDA GPU when torch sees one, else the CPU) | cpu | cuda | "
        "cuda:N | mps: where the model trains and evaluates; one that is missing stops the run",
    )


METHOD_MODELS = method_models()
TASK_MODELS = task_models()
# the tables as unions told apart by name: one model per registered method and task
MethodUnion = Annotated[reduce(operator.or_, METHOD_MODELS.values()), Field(discriminator="name")]
TaskUnion = Annotated[reduce(operator.or_, TASK_MODELS.values()), Field(discriminator="name")]


def refusal(text: str) -> PydanticCustomError:
    """A validation error whose text follows the key's dotted path as it stands (one line)."""
    return PydanticCustomError("raflora_check", "{text}", {"text": text})


def _unknown_name(value: str, known) -> PydanticCustomError:
    return refusal(f"= {value!r} is not known; choose one of {', '.join(known)}")


def _method_shorthand(value: Any) -> Any:
    """``method = "NAME"`` is short for a table with the name alone (every option at its default)."""
    if isinstance(value, str):
        if value not in METHOD_MODELS:
            raise _unknown_name(value, METHOD_MODELS)
        return {"name": value}
    return value


def _to_method(value: Any, handler: Any) -> Method:
    return value if isinstance(value, Method) else handler(value).method()


@dataclass
class TaskConfig:
    """``[task]``: the task's name and its options (every other key of the table), as written."""

    name: str = "synthetic"
    options: dict[str, Any] = field(default_factory=dict)


def _task_table(value: Any) -> Any:
    """``name`` defaults to synthetic; a ``[task.options]`` table is read as keys of ``[task]``."""
    if isinstance(value, dict):
        value = {"name": "synthetic", **value}
        if isinstance(value.get("options"), dict):
            value = {**value, **value.pop("options")}
    return value


def _to_task(value: Any, handler: Any) -> TaskConfig:
    if isinstance(value, TaskConfig):
        return value
    checked = handler(value)
    return TaskConfig(checked.name, {k: getattr(checked, k) for k in value if k != "name"})


MethodTable = Annotated[
    MethodUnion,
    WrapValidator(_to_method),
    BeforeValidator(_method_shorthand, json_schema_input_type=Literal[tuple(METHOD_MODELS)] | MethodUnion),
]
TaskTable = Annotated[TaskUnion, WrapValidator(_to_task), BeforeValidator(_task_table)]


class FederationConfig(Section):
    num_clients: int = setting(10, "clients in the federation; at most 1,000,000", gt=0, le=1_000_000)
    sample_fraction: float = setting(1.0, "share of clients per round (rounded, at least 1)", gt=0, le=1)
    sample_count: int = setting(0, "> 0: exactly this many clients per round instead", ge=0)
    transport_dtype: Literal[tuple(TRANSPORT_DTYPES)] = setting(  # type: ignore[valid-type]
        "float32", "float32 | bfloat16 | float16: factors are really encoded and decoded"
    )
    method: MethodTable = setting(
        help="[federation.method]: name = the aggregation method, plus its own options (see below)", factory=RaFLoRA
    )
    max_norm_ratio: float = setting(
        10.0,
        "refuse an update whose norm (||s B A||, or the uploaded factor's) is "
        "more than this many times the round's median; 0 = off, applied from 3 updates",
        json_schema_extra={"anyOf": [{"const": 0}, {"minimum": 1}]},
    )
    max_client_weight: float = setting(
        0.5,
        "the largest share of a round's weight one client may get, in (0, 1]; a larger share is cut to "
        "it and the rest spread over the others by their example counts (equal shares when they cannot "
        "all fit); 0.5: no client outweighs all the others together; 1 = off",
        gt=0,
        le=1,
    )
    dropout: float = setting(
        0.0, "share of the sampled clients that fail each round (seeded by run seed and round), in [0, 1)", ge=0, lt=1
    )
    round_timeout: float = setting(
        3600.0,
        "Flower runtime: seconds a round waits for the clients' replies; then it closes with the replies it has",
        gt=0,
        le=86400,
    )

    @field_validator("max_norm_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if value != 0 and not value >= 1:
            raise refusal(f"must be 0 (off) or a number >= 1, got {value!r}")
        return value


class RanksConfig(Section):
    policy: Literal[RANK_POLICIES] = setting(  # type: ignore[valid-type]
        "cycle", "explicit | cycle | groups | heavy_tail | uniform | homogeneous"
    )
    ranks: list[int] = setting(
        help="explicit: one per client; cycle: repeated; groups: one per group", factory=lambda: [2, 4, 8, 16]
    )
    shares: list[float] = setting(
        help="groups: share of clients per rank, e.g. [0.1, 0.4, 0.5] for [64, 16, 4]", factory=list
    )
    rank: int = setting(8, "homogeneous: every client's rank")
    r_min: int = setting(
        2,
        "uniform: integers in [r_min, r_max]; heavy_tail: powers of two from r_min to r_max with probability ~ 1/r",
        gt=0,
    )
    r_max: int = setting(16, "largest rank any client may have; the export rank", gt=0)


class LoraConfig(Section):
    alpha: float = setting(16.0, "LoRA alpha, in (0, 1e4]", gt=0, le=1e4)
    scaling: Literal[SCALINGS] = setting(  # type: ignore[valid-type]
        "lora", "lora: s = alpha/r | rslora: alpha/sqrt(r) | sfed: alpha*sqrt(N/r), N = clients per round"
    )
    dropout: float = setting(0.0, "LoRA dropout", ge=0, lt=1)


class TrainConfig(Section):
    local_steps: int = setting(10, "optimiser steps per client per round (used when local_epochs = 0)", ge=0)
    local_epochs: int = setting(0, "> 0: passes over the client's data instead of local_steps", ge=0)
    optimizer: Literal[OPTIMIZERS] = setting("adamw", "adamw | sgd")  # type: ignore[valid-type]
    lr: float = setting(5e-3, "learning rate, in (0, 10]", gt=0, le=10)
    lr_schedule: Literal[LR_SCHEDULES] = setting(  # type: ignore[valid-type]
        "constant", "constant | cosine | linear, over all rounds (decays to 0)"
    )
    weight_decay: float = setting(0.0, "optimiser weight decay, in [0, 10]", ge=0, le=10)
    momentum: float = setting(0.9, "sgd only; in [0, 1)", ge=0, lt=1)
    batch_size: int = setting(16, "examples per step", gt=0)
    grad_clip: float = setting(1.0, "max gradient norm, 0 = off", ge=0)
    precision: str = setting(
        "float32",
        "float32 | bf16: forward passes (training and evaluation) under bfloat16 "
        "autocast; faster on GPUs and on CPUs with avx512_bf16, slower on other CPUs; "
        "numbers change slightly",
    )


class PartitionConfig(Section):
    scheme: Literal[PARTITIONS] = setting(  # type: ignore[valid-type]
        "dirichlet", "iid | dirichlet (label skew) | by_key (the task's natural key)"
    )
    alpha: float = setting(
        0.5, "dirichlet concentration: smaller = fewer classes per client; at most 1e6", gt=0, le=1e6
    )
    min_examples: int = setting(4, "dirichlet: every client gets at least this many examples", gt=0)


class EvalConfig(Section):
    batch_size: int = setting(64, "examples per evaluation batch", gt=0)
    every: int = setting(1, "evaluate every N rounds; the last round is always evaluated", gt=0)
    max_examples: int = setting(0, "> 0: a fixed seeded subsample of the test split", ge=0)
    validation: float = setting(
        0.0,
        "share of the training examples held out (seeded, before the partition) as the server's "
        "validation set, in [0, 0.5]; > 0: every evaluated round is scored on it (val_<metric>, "
        "val_loss; best-round choices read it) and the test split only after the last round; "
        "0: the test split every evaluated round",
        ge=0.0,
        le=0.5,
    )


TASK_HELP = "text | vision | reasoning | user_text | synthetic; every other key of [task]: its options (docs/tasks.md)"


class Config(Section):
    """A raflora run: its TOML config file, every section and key (docs/usage.md)."""

    run: RunConfig = Field(default_factory=RunConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    ranks: RanksConfig = Field(default_factory=RanksConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    task: TaskTable = Field(default_factory=TaskConfig, description=TASK_HELP)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def out(self) -> str:
        return self.run.out or f"runs/{self.run.name}"


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (``raflora schema``), for editors that complete and check
    TOML keys: the same models that read a config."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}


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
