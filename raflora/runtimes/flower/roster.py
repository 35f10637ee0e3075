"""Which Flower node plays which client: the server learns it by asking.

Every node the server has not heard from gets a QUERY message (with the federation's class names);
the node answers with its client id, rank and example count (:mod:`.node`). Replies are matched to
queries by the message id Flower returns, so a failed query is reported with Flower's own reason.

Two kinds of federation, told apart by the first node that answers:

- **simulation** (nodes give a ``partition-id``): client ``k`` is the node with partition id ``k``
  and has the config's rank; the run starts when nodes ``0 .. num_clients - 1`` have answered.
- **declared** (nodes give their own ``rank`` and ``data-file``): the clients are the nodes that
  answered, numbered in order of their client ids for those present at the start, then in order
  of arrival; each rank is checked against ``ranks.r_max`` and the method's rank rules
  (:meth:`Method.check_ranks`). Nodes may join after round 1 (with a rank the run already has).

Either way, a node that comes back under a new node id with a known client id gets its client back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from raflora.config import Config
from raflora.config_io import config_to_toml
from raflora.runtimes.flower.records import with_run


class NodesMissing(RuntimeError):
    """The nodes a run waits for did not all answer in time."""


@dataclass
class Member:
    client_id: str
    rank: int
    examples: int
    node: int  # the Flower node id that plays it now
    partition_id: int = -1


class Roster:
    """The clients of a Flower run and the nodes that play them (index = client index)."""

    def __init__(
        self, config: Config, labels: Sequence[str] | None = None, say: Callable[[str], None] | None = None
    ) -> None:
        self.config, self.labels = config, list(labels) if labels else None
        self.config_toml = config_to_toml(config)  # what nodes build their run from (before declared ranks)
        self.say = say or (lambda line: None)
        self.members: list[Member] = []
        self.declared: bool | None = None  # None until the first node answers
        self.run_ranks: set[int] | None = None  # the ranks a declared run was built for (late joiners)
        self._pending: dict[str, int] = {}  # QUERY message id -> node id
        self._asked: set[int] = set()

    # -- lookups -----------------------------------------------------------------------------------
    def node(self, client: int) -> int:
        return self.members[client].node

    def ranks(self) -> list[int]:
        return [m.rank for m in self.members]

    def names(self) -> list[str]:
        return [m.client_id for m in self.members]

    def stamp(self, content: RecordDict) -> RecordDict:
        """``content`` with the run's config and class names, which every message carries."""
        return with_run(content, self.config_toml, self.labels)

    # -- asking -----------------------------------------------------------------------------------
    def refresh(self, grid: Grid, wait_s: float = 0.0) -> list[int]:
        """Ask the nodes not asked yet, collect the answers that arrive within ``wait_s`` seconds
        (at least one look); the client indices that joined."""
        new = [n for n in grid.get_node_ids() if n not in self._asked]
        if new:
            queries = [Message(self.stamp(RecordDict()), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
            for node, msg_id in zip(new, grid.push_messages(queries)):
                if msg_id:
                    self._pending[msg_id] = node
            self._asked.update(new)
        joined: list[int] = []
        deadline = time.monotonic() + wait_s
        while self._pending:
            for reply in grid.pull_messages(list(self._pending)):
                node = self._pending.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    joined += self._answer(node, reply)
            if not self._pending or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return joined

    def wait(self, grid: Grid, min_nodes: int, wait_s: float = 600.0) -> None:
        """Until the run can start: simulation, nodes ``0 .. num_clients - 1``; declared, ``min_nodes``
        of them (0: ``federation.num_clients``). :class:`NodesMissing` after ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while not self._ready(min_nodes):
            if time.monotonic() > deadline:
                raise NodesMissing(f"waited {wait_s:.0f} s for nodes: {self._missing(min_nodes)}")
            if not self.refresh(grid, wait_s=1.0):
                time.sleep(1.0)
        if self.declared:
            # clients present at the start are numbered by name, so a rerun numbers them alike
            self.members.sort(key=lambda m: m.client_id)
            for client, m in enumerate(self.members):
                self.say(f"client {client}: {m.client_id!r}, rank {m.rank}, {m.examples} examples, node {m.node}")

    def _ready(self, min_nodes: int) -> bool:
        n = self.config.federation.num_clients
        if self.declared:
            return len(self.members) >= (min_nodes or n)
        return self.declared is False and len(self.members) == n and all(m is not None for m in self.members)

    def _missing(self, min_nodes: int) -> str:
        if self.declared:
            have = len(self.members)
            return (
                f"{have} of {min_nodes or self.config.federation.num_clients} declared "
                f"({', '.join(self.names()) or 'none'}); set the run config key min-nodes to start with fewer"
            )
        missing = [k for k, m in enumerate(self.members) if m is None] or list(
            range(self.config.federation.num_clients)
        )
        return f"no SuperNode with partition-id {missing[:10]} answered"

    # -- one answer -----------------------------------------------------------------------------------
    def _answer(self, node: int, reply: Message) -> list[int]:
        if reply.has_error():
            self.say(f"node {node} did not join: {reply.error.reason}")
            return []
        try:
            who = reply.content["node"]
            name, rank, declared = str(who["client-id"]), int(who["rank"]), bool(who["declared"])
            member = Member(name, rank, int(who["examples"]), node, int(who["partition-id"]))
        except (KeyError, TypeError, ValueError) as err:  # e.g. a node running another raflora version
            self.say(f"node {node} did not join: unreadable answer ({type(err).__name__}: {err})")
            return []
        known = next((k for k, m in enumerate(self.members) if m is not None and m.client_id == name), None)
        if known is not None:
            old = self.members[known].node
            self.members[known].node = node
            self.say(f"client {known} ({name!r}) is back on node {node} (was node {old})")
            return []
        if self.declared is None:
            self.declared = declared
            if not declared:
                self.members = [None] * self.config.federation.num_clients  # type: ignore[list-item]
        why = self._refusal(member, declared)
        if why:
            self.say(f"node {node} ({name!r}) refused: {why}")
            return []
        if declared:
            self.members.append(member)
            client = len(self.members) - 1
        else:
            client = member.partition_id
            self.members[client] = member
        if self.run_ranks is not None:  # a late joiner (those present at the start: see wait)
            self.say(f"client {client}: {name!r}, rank {rank}, {member.examples} examples, node {node}")
        return [client]

    def _refusal(self, member: Member, declared: bool) -> str:
        if declared != self.declared:
            want = "declare rank and data-file" if self.declared else "give partition-id (a simulation)"
            return f"the nodes of this federation {want}"
        if not declared:
            n = self.config.federation.num_clients
            if not 0 <= member.partition_id < n:
                return f"partition-id {member.partition_id} is not in 0..{n - 1}"
            return ""
        r_max = self.config.ranks.r_max
        if not 1 <= member.rank <= r_max:
            return f"rank {member.rank} is not in 1..ranks.r_max = {r_max}"
        if self.run_ranks is not None and member.rank not in self.run_ranks:
            return (
                f"rank {member.rank} is not one of the ranks this run started with {sorted(self.run_ranks)}; "
                "a node joining later needs one of them"
            )
        try:
            self.config.federation.method.check_ranks(self.ranks() + [member.rank])
        except ValueError as err:
            return str(err)
        return ""
