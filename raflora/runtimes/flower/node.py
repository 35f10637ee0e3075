"""What a SuperNode says about itself, and the run it builds from that.

A node is configured by ``flower-supernode --node-config "..."``:

- ``client-id``: its name, stable across restarts (the server gives a restarted node its client
  back by it); default ``partition-<partition-id>``, else ``node-<Flower node id>``;
- ``rank``: its LoRA rank, the device's budget (checked by the server against ``ranks.r_max`` and
  the method's rank rules);
- ``data-file``: its own training data, for the tasks that read a file (``train_file``, e.g.
  ``user_text``); ``test-file`` optionally its own test data (default: the data file);
- ``partition-id``: the simulation's way (no rank, no data file): the node plays client
  ``partition-id`` of the config, with the config's rank and that client's shard of the config's
  data, exactly as the embedded runtime does.

A node that declares a rank and a data file builds a one-client run from the config: its own file
(every row, subsampled by ``train_size`` when the config says so) is its whole shard, the rank is
its own, the classes are numbered as the server numbers them (``labels``, which the server sends).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import Context

from raflora.config import ConfigError
from raflora.config_io import config_from_dict
from raflora.federation.setup import RunSetup, build_setup, derived_seed, hold_out, load_data, split_among_clients
from raflora.ranks import client_ranks
from raflora.tasks import build_task


@dataclass(frozen=True)
class Node:
    client_id: str
    rank: int = 0  # 0: the config's rank for partition_id
    data_file: str = ""
    test_file: str = ""
    partition_id: int = -1  # -1: none (the node brings its own data)

    @property
    def declared(self) -> bool:
        """Whether the node brings its own rank and data (a deployment), not a partition id."""
        return bool(self.rank or self.data_file)


def node_of(context: Context) -> Node:
    """The node's declaration from its ``node_config``; ConfigError naming what is missing."""
    given: Mapping[str, Any] = context.node_config
    unknown = set(given) - {"client-id", "rank", "data-file", "test-file", "partition-id", "num-partitions"}
    if unknown:
        raise ConfigError(
            f"--node-config: unknown key(s) {sorted(unknown)}; "
            "keys: client-id, rank, data-file, test-file, partition-id"
        )
    pid = int(given.get("partition-id", -1))
    rank = int(given.get("rank", 0))
    node = Node(
        client_id=str(given.get("client-id") or (f"partition-{pid}" if pid >= 0 else f"node-{context.node_id}")),
        rank=rank,
        data_file=str(given.get("data-file", "")),
        test_file=str(given.get("test-file", "")),
        partition_id=pid,
    )
    if node.declared and not (rank > 0 and node.data_file):
        raise ConfigError(
            f"--node-config of {node.client_id!r}: declare both rank (>= 1) and data-file, "
            f"got rank={rank} data-file={node.data_file!r}"
        )
    if not node.declared and pid < 0:
        raise ConfigError("--node-config: declare rank=R and data-file='...' (or, as in a simulation, partition-id=K)")
    return node


def node_config_data(data: Mapping[str, Any], node: Node, labels: Sequence[str] | None) -> dict[str, Any]:
    """The raflora config of a node that brings its own rank and data: one client, its file, its rank."""
    data = copy.deepcopy(dict(data))
    task = data.setdefault("task", {})
    if "train_file" not in task:
        raise ConfigError(
            f"node {node.client_id!r} declares data-file, but task {task.get('name')!r} of the "
            "run's config reads no data file (train_file); use a file task such as user_text"
        )
    task["train_file"] = node.data_file
    task["test_file"] = node.test_file or node.data_file
    if labels:
        task["labels"] = list(labels)
    federation = data.setdefault("federation", {})
    federation.update(num_clients=1, sample_count=0, sample_fraction=1.0)
    ranks = data.get("ranks", {})
    data["ranks"] = {"policy": "explicit", "ranks": [node.rank], "r_max": max(int(ranks.get("r_max", 16)), node.rank)}
    data["partition"] = {"scheme": "iid", "min_examples": 1}
    return data


class NodeSetup(RunSetup):
    """A declared node's one-client run: client 0 is the node; its seeds follow its client id (the
    server's client index may change between runs, the node's name does not)."""

    client_id: str = ""

    def client_seed(self, round_: int, client: int) -> int:
        return derived_seed("client", self.config.run.seed, round_, self.client_id)


def build_node_setup(data: Mapping[str, Any], node: Node, labels: Sequence[str] | None) -> RunSetup:
    """The run a node trains in: the config's as is for a simulation node, its own for a declared one."""
    if not node.declared:
        return build_setup(config_from_dict(data))
    setup = build_setup(config_from_dict(node_config_data(data, node, labels)))
    own = NodeSetup(**{name: getattr(setup, name) for name in RunSetup.__dataclass_fields__})
    own.client_id = node.client_id
    return own


def node_identity(data: Mapping[str, Any], node: Node, labels: Sequence[str] | None) -> tuple[int, int]:
    """``(rank, training examples)`` of a node, with its config checked and its data read but no
    model built: a deployed node answers the server's QUERY in a process of its own, and building
    the model there (importing transformers) would cost seconds for nothing."""
    config = config_from_dict(node_config_data(data, node, labels) if node.declared else data)
    # the examples it trains on (build_setup's): a validation hold-out is not among them
    task = build_task(config.task.name, **config.task.options)
    shards = split_among_clients(config, hold_out(load_data(task, config), config)[0])
    if node.declared:
        return node.rank, len(shards[0])
    n = config.federation.num_clients
    if not 0 <= node.partition_id < n:
        raise ConfigError(
            f"--node-config: partition-id {node.partition_id} is not in 0..{n - 1} (federation.num_clients = {n})"
        )
    return client_ranks(config.ranks, n, config.run.seed)[node.partition_id], len(shards[node.partition_id])
