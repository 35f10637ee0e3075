"""Everything fixed for a whole run, derived from the config: task, data, client shards, client
ranks, scales, the PEFT model, and the seeded choices (client sampling, per-client seeds, the
learning-rate schedule)."""

from __future__ import annotations

import contextlib
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from raflora.aggregation import Method
from raflora.client.adapters import AdapterModel
from raflora.client.device import resolve_device
from raflora.config import Config, ConfigError
from raflora.federation.sampling import sample_size
from raflora.federation.sizes import check_sizes
from raflora.lora import fresh_factors, lora_scale
from raflora.partition import partition
from raflora.ranks import client_ranks
from raflora.tasks import build_task
from raflora.tasks.base import Task, TaskData
from raflora.tasks.common import spinner, subsample


def derived_seed(*parts) -> int:
    """A stable 31-bit seed from the run seed and labels such as the round and the client."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


@dataclass
class RunSetup:
    config: Config
    task: Task
    data: TaskData
    shards: list[list[int]]  # example indices per client
    ranks: list[int]  # rank per client
    levels: list[int]  # the federation's rank set (the diagnostics' rank partitions)
    scales: dict[int, float]  # rank -> s (also for r_max, the export rank)
    model: AdapterModel
    shapes: dict[str, tuple[int, int]]
    test: list
    base0: dict  # module -> the pretrained weight (the reference of exported adapters)
    method: Method  # the config's method bound to this federation (Method.bind)
    validation: list = field(default_factory=list)  # eval.validation's held-out training examples

    @property
    def r_min(self) -> int:
        return min(self.ranks)

    def sample_clients(self, round_: int) -> list[int]:
        n, k = self.config.federation.num_clients, sample_size(self.config)
        if k >= n:
            return list(range(n))
        rng = random.Random(derived_seed("sample", self.config.run.seed, round_))
        return sorted(rng.sample(range(n), k))

    def client_seed(self, round_: int, client: int) -> int:
        return derived_seed("client", self.config.run.seed, round_, client)

    def client_examples(self, client: int) -> list:
        return [self.data.train[i] for i in self.shards[client]]

    def lr_at(self, round_: int, fraction: float) -> float:
        t = self.config.train
        progress = (round_ - 1 + fraction) / self.config.run.rounds
        if t.lr_schedule == "linear":
            return t.lr * (1.0 - progress)
        if t.lr_schedule == "cosine":
            return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return t.lr

    def fresh_starts(self) -> dict:
        seed = self.config.run.seed
        return {
            r: {m: fresh_factors(m, *self.shapes[m], r, self.scales[r], seed) for m in sorted(self.shapes)}
            for r in sorted(set(self.ranks))
        }


def build_setup(config: Config) -> RunSetup:
    torch.set_num_threads(config.run.threads)
    device = resolve_device(config.run.device)  # a missing GPU stops the run before anything loads
    seed = config.run.seed
    task = build_task(config.task.name, **config.task.options)
    check_model(task, config)  # a model that is not installed: said before the data and the spinner
    data, validation = hold_out(load_data(task, config), config)
    fed = config.federation
    shards = split_among_clients(config, data)
    ranks = client_ranks(config.ranks, fed.num_clients, seed)
    n = sample_size(config)
    method = fed.method.bind(ranks, n)
    levels = method.rank_partitions(ranks)
    lora = config.lora
    scales = {
        r: method.scale_for(r, lora_scale(lora.scaling, lora.alpha, r, n))
        for r in sorted(set(ranks) | {config.ranks.r_max})
    }
    torch.manual_seed(seed)
    base = load_model(task, config)
    check_sizes(config, task, base, ranks)  # before the adapters are built on it, or the data tokenised
    model = AdapterModel(
        base,
        task.target_modules,
        task.head_modules,
        sorted(set(ranks)),
        scales,
        lora.dropout,
        device=device,
        precision=config.train.precision,
    )
    test = list(data.test)
    if config.eval.max_examples > 0:
        test = subsample(test, config.eval.max_examples, derived_seed("eval", seed))
    task.prepare(list(data.train) + validation + test)
    base0 = model.base_weights()
    return RunSetup(
        config, task, data, shards, ranks, levels, scales, model, model.shapes(), test, base0, method, validation
    )


def check_inputs(config: Config) -> None:
    """Read the data, split it, load the model and check the sizes (:mod:`raflora.federation.sizes`)
    as :func:`build_setup` does, and drop them: a runtime that sets the run up elsewhere (Flower's
    ServerApp, under Ray) refuses bad input here, as a ConfigError, before it starts."""
    resolve_device(config.run.device)
    task = build_task(config.task.name, **config.task.options)
    check_model(task, config)
    split_among_clients(config, hold_out(load_data(task, config), config)[0])
    check_sizes(
        config,
        task,
        load_model(task, config),
        client_ranks(config.ranks, config.federation.num_clients, config.run.seed),
    )


# The three steps below read the user's files and models. What they refuse is a config problem
# (one line, exit 2), raised here while the run is set up: before the first round, not in it.


def load_data(task: Task, config: Config) -> TaskData:
    """The task's examples; a data file that cannot be used is a ConfigError naming it."""
    try:
        data = task.load_data()
    except ConfigError:
        raise
    except (ValueError, OSError, ImportError) as err:  # UnicodeError and csv problems are ValueErrors
        raise ConfigError(f"task {config.task.name!r}: {err}") from None
    if not data.train or not data.test:
        raise ConfigError(
            f"task {config.task.name!r} has {len(data.train)} training and {len(data.test)} test examples; "
            "it needs some of each"
        )
    return data


def hold_out(data: TaskData, config: Config) -> tuple[TaskData, list]:
    """``eval.validation``'s share of the training examples, drawn under the run seed, as the
    server's validation set, and the data without them (the clients' pool). Global, not per client:
    the examples are drawn before the partition, so every client keeps its share of the rest; the
    partition of a run with a validation set differs from one without. Nothing is held out at 0."""
    share = config.eval.validation
    if share <= 0:
        return data, []
    n = len(data.train)
    count = int(round(share * n))
    if count < 1 or count >= n:
        raise ConfigError(
            f"eval.validation = {share:g} of {n} training examples holds out {count}; "
            "it must leave at least one example on each side"
        )
    held = set(subsample(range(n), count, derived_seed("validation", config.run.seed)))
    rest = [i for i in range(n) if i not in held]

    def pick(values):
        return None if values is None else [values[i] for i in rest]

    kept = replace(data, train=pick(data.train), train_labels=pick(data.train_labels), train_keys=pick(data.train_keys))
    return kept, [data.train[i] for i in sorted(held)]


def split_among_clients(config: Config, data: TaskData) -> list[list[int]]:
    """The partition of the training examples; too few examples (or keys) for the clients is a ConfigError."""
    p, n = config.partition, config.federation.num_clients
    if p.scheme == "by_key" and data.train_keys is None:
        raise ConfigError(
            f"partition.scheme = 'by_key' needs a key per training example and task {config.task.name!r} has none: "
            "set task.key_column to the column that groups the rows (user, site, ...), or choose "
            "partition.scheme = 'iid' or 'dirichlet'"
        )
    try:
        return partition(
            p.scheme,
            n,
            len(data.train),
            data.train_labels,
            data.train_keys,
            alpha=p.alpha,
            seed=derived_seed("partition", config.run.seed),
            min_examples=p.min_examples,
        )
    except ValueError as err:
        source = data.info.get("source")
        where = f" (examples from {source!r})" if source else ""
        raise ConfigError(f"federation.num_clients = {n}, partition.scheme = {p.scheme!r}: {err}{where}") from None


def check_model(task: Task, config: Config) -> None:
    """A model that is not on this machine (a package not installed, a missing folder, a Hub id the
    cache lacks) as a ConfigError naming the key, at once: nothing is loaded to find out."""
    with _model_problem(task, config):
        task.check_model()


def load_model(task: Task, config: Config):
    """The task's base model; a model that is not available here (a Hub id offline, a missing
    folder, target modules it lacks) is a ConfigError naming the key."""
    with _model_problem(task, config):
        task.check_model()  # cheap; said before the spinner starts
        with spinner(f"loading model {config.task.options.get('model', config.task.name)}"):
            return task.load_model()


@contextlib.contextmanager
def _model_problem(task: Task, config: Config) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, ImportError) as err:
        model = config.task.options.get("model", getattr(task, "model", None))
        key = f"task.model = {model!r}" if model is not None else f"task {config.task.name!r}"
        raise ConfigError(f"{key}: the model cannot be loaded: {err}") from None
