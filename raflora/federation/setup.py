"""Everything fixed for a whole run, derived from the config: task, data, client shards, client
ranks, scales, the PEFT model, and the seeded choices (client sampling, per-client seeds, the
learning-rate schedule)."""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

import torch

from raflora.aggregation import Method
from raflora.client.adapters import AdapterModel
from raflora.config import Config
from raflora.ranks import client_ranks
from raflora.lora import fresh_factors, lora_scale
from raflora.partition import partition
from raflora.tasks import build_task
from raflora.tasks.base import Task, TaskData
from raflora.tasks.common import subsample


def sample_size(config: Config) -> int:
    f = config.federation
    if f.sample_count > 0:
        return f.sample_count
    return max(1, int(round(f.sample_fraction * f.num_clients)))


def derived_seed(*parts) -> int:
    """A stable 31-bit seed from the run seed and labels such as the round and the client."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


@dataclass
class RunSetup:
    config: Config
    task: Task
    data: TaskData
    shards: list[list[int]]       # example indices per client
    ranks: list[int]              # rank per client
    levels: list[int]             # the federation's rank set (the diagnostics' rank partitions)
    scales: dict[int, float]      # rank -> s (also for r_max, the export rank)
    model: AdapterModel
    shapes: dict[str, tuple[int, int]]
    test: list
    base0: dict  # module -> the pretrained weight (the reference of exported adapters)
    method: Method  # the config's method bound to this federation (Method.bind)

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
    seed = config.run.seed
    task = build_task(config.task.name, **config.task.options)
    data = task.load_data()
    fed = config.federation
    shards = partition(
        config.partition.scheme, fed.num_clients, len(data.train), data.train_labels, data.train_keys,
        alpha=config.partition.alpha, seed=derived_seed("partition", seed), min_examples=config.partition.min_examples,
    )
    ranks = client_ranks(config.ranks, fed.num_clients, seed)
    n = sample_size(config)
    method = fed.method.bind(ranks, n)
    levels = method.rank_partitions(ranks)
    lora = config.lora
    scales = {r: method.scale_for(r, lora_scale(lora.scaling, lora.alpha, r, n))
              for r in sorted(set(ranks) | {config.ranks.r_max})}
    torch.manual_seed(seed)
    model = AdapterModel(
        task.load_model(), task.target_modules, task.head_modules, sorted(set(ranks)), scales, lora.dropout
    )
    test = list(data.test)
    if config.eval.max_examples > 0:
        test = subsample(test, config.eval.max_examples, derived_seed("eval", seed))
    task.prepare(list(data.train) + test)
    base0 = {m: model.base_weight(m).detach().clone() for m in model.modules}
    return RunSetup(config, task, data, shards, ranks, levels, scales, model, model.shapes(), test, base0, method)
