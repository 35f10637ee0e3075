"""Which Flower node plays which client: the server learns it by asking.

Every node the server has not heard from gets a QUERY message (with the federation's class names);
the node answers with its client id, rank and example count (:mod:`.node`). Replies are matched to
queries by the message id Flower returns, so a failed query is reported with Flower's own reason.

Two kinds of federation; which one is the server's configuration (``declared``), never a node's:

- **simulation** (nodes give a ``partition-id``): client ``k`` is the node with partition id ``k``
  and has the config's rank; the run starts when nodes ``0 .. num_clients - 1`` have answered.
- **declared** (nodes give their own ``rank`` and ``data-file``): the clients are the nodes that
  answered, numbered in order of their client ids for those present at the start, then in order
  of arrival; each rank is checked against ``ranks.r_max`` and the method's rank rules
  (:meth:`Method.check_ranks`), each example count once here (a positive integer below 10**12):
  it is the client's weight for the whole run (capped by ``federation.max_client_weight``), and a
  train reply that says another is refused. Nodes may join after round 1 (with a rank the run already has).
A node of the other kind is refused.

A client id (a non-empty string) belongs to the node that first declared it (``owners``, kept in
the run folder's :data:`OWNERS_FILE`). Another node declaring it is refused while that node is
connected; with node authentication (``node_auth``: a node id is a registered key, the same after
a restart) always, also after a resume (the file is read back). Without it, a node that comes back
under a new node id gets its client back once its old node id is gone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from raflora.aggregation.validate import count_problem
from raflora.config import Config, ConfigError
from raflora.config_io import config_to_toml
from raflora.runtimes.flower.records import with_run

OWNERS_FILE = "flower_nodes.json"  # in the run folder: {client id: the node id that owns it}


def load_owners(out: str | Path) -> dict[str, int]:
    """The client id -> node id bindings of the run in ``out`` (none for a run without the file)."""
    path = Path(out) / OWNERS_FILE
    if not path.is_file():
        return {}
    try:
        owners = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): int(node) for name, node in owners.items()}
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise ConfigError(f"cannot resume: {str(path)!r} is not a map of client ids to node ids") from None


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
        self,
        config: Config,
        labels: Sequence[str] | None = None,
        say: Callable[[str], None] | None = None,
        *,
        declared: bool = False,
        node_auth: bool = False,
        owners: dict[str, int] | None = None,
    ) -> None:
        self.config, self.labels = config, list(labels) if labels else None
        self.config_toml = config_to_toml(config)  # what nodes build their run from (before declared ranks)
        self.say = say or (lambda line: None)
        self.declared, self.node_auth = declared, node_auth
        # declared: in order of arrival; simulation: one slot per partition id
        self.members: list[Member] = [] if declared else [None] * config.federation.num_clients  # type: ignore[list-item]
        self.owners: dict[str, int] = dict(owners or {})  # client id -> the node id that owns it
        self.file: Path | None = None  # where the owners are kept (:meth:`keep_in`)
        self.run_ranks: set[int] | None = None  # the ranks a declared run was built for (late joiners)
        self._pending: dict[str, int] = {}  # QUERY message id -> node id
        self._asked: set[int] = set()
        self._retry: set[int] = set()  # nodes refused while another node held their client id

    def keep_in(self, path: Path) -> None:
        """Keep the owners in ``path`` (the run folder's :data:`OWNERS_FILE`) from now on."""
        self.file = path
        self._save()

    def _save(self) -> None:
        if self.file is None:
            return
        part = self.file.with_name(self.file.name + ".part")
        part.write_text(json.dumps(self.owners, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(part, self.file)

    @property
    def mode(self) -> str:
        return "declared" if self.declared else "partition-id"

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
    def refresh(self, grid: Grid, wait_s: float = 0.0, retry: bool = False) -> list[int]:
        """Ask the nodes not asked yet (``retry``: and those refused because another connected node
        held their client id), collect the answers that arrive within ``wait_s`` seconds (at least
        one look); the client indices that joined."""
        if retry:
            self._asked -= self._retry
            self._retry.clear()
        connected = set(grid.get_node_ids())
        new = [n for n in connected if n not in self._asked]
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
                    joined += self._answer(node, reply, connected)
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
        return all(m is not None for m in self.members)

    def _missing(self, min_nodes: int) -> str:
        if self.declared:
            have = len(self.members)
            return (
                f"{have} of {min_nodes or self.config.federation.num_clients} declared "
                f"({', '.join(self.names()) or 'none'}); set the run config key min-nodes to start with fewer"
            )
        missing = [k for k, m in enumerate(self.members) if m is None]
        return f"no SuperNode with partition-id {missing[:10]} answered"

    # -- one answer -----------------------------------------------------------------------------------
    def _answer(self, node: int, reply: Message, connected: set[int]) -> list[int]:
        if reply.has_error():
            self.say(f"node {node} did not join: {reply.error.reason}")
            return []
        try:
            who = reply.content["node"]
            name, rank, declared = who["client-id"], int(who["rank"]), bool(who["declared"])
            member = Member(name, rank, int(who["examples"]), node, int(who["partition-id"]))
        except (KeyError, TypeError, ValueError, OverflowError) as err:  # e.g. a node of another raflora version
            self.say(f"node {node} did not join: unreadable answer ({type(err).__name__}: {err})")
            return []
        if not isinstance(name, str) or not name.strip():
            self.say(f"node {node} refused: client-id must be a non-empty string, got {name!r}")
            return []
        known = next((k for k, m in enumerate(self.members) if m is not None and m.client_id == name), None)
        # a known client coming back keeps its rank: only its kind and its id are checked
        why = (
            self._taken(member, connected)
            or self._kind(declared)
            or ("" if known is not None else self._refusal(member))
        )
        if why:
            self.say(f"node {node} ({name!r}) refused: {why}")
            return []
        self.owners[name] = node
        self._save()
        if known is not None:
            old = self.members[known].node
            self.members[known].node = node
            self.say(f"client {known} ({name!r}) is back on node {node} (was node {old})")
            return []
        if self.declared:
            self.members.append(member)
            client = len(self.members) - 1
        else:
            client = member.partition_id
            self.members[client] = member
        if self.run_ranks is not None:  # a late joiner (those present at the start: see wait)
            self.say(f"client {client}: {name!r}, rank {rank}, {member.examples} examples, node {node}")
        return [client]

    def _taken(self, member: Member, connected: set[int]) -> str:
        """Why ``member``'s client id (or partition) belongs to another node, else ""."""
        name, node = member.client_id, member.node
        owner = self.owners.get(name)
        if not self.declared and 0 <= member.partition_id < len(self.members):
            holder = self.members[member.partition_id]
            if holder is not None and holder.client_id != name:
                return f"partition-id {member.partition_id} is client {holder.client_id!r} (node {holder.node})"
        if owner is None or owner == node:
            return ""
        if self.node_auth:
            return (
                f"client id {name!r} belongs to node {owner} (with node authentication, a client id stays "
                "with the node that first declared it)"
            )
        if owner in connected:
            self._retry.add(node)  # asked again next round: its old node id may be gone by then
            return f"client id {name!r} is played by node {owner}, which is still connected"
        return ""

    def _kind(self, declared: bool) -> str:
        if declared == self.declared:
            return ""
        want = "declare rank and data-file" if self.declared else "give partition-id (a simulation)"
        return f"the nodes of this federation {want} (the server's run config: nodes = {self.mode!r})"

    def _refusal(self, member: Member) -> str:
        if not self.declared:
            n = self.config.federation.num_clients
            if not 0 <= member.partition_id < n:
                return f"partition-id {member.partition_id} is not in 0..{n - 1}"
            return ""
        problem = count_problem(member.examples)
        if problem:
            return f"examples must be a positive integer below 10**12, got {problem}"
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
