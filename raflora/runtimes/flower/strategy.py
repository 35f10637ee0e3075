"""raflora's round protocol as a Flower strategy.

Every method only arranges calls: the start factors, the bytes and the sampling come from
:mod:`raflora.federation.round` / :mod:`raflora.federation.setup`, the aggregation, merging,
diagnostics and evaluation from :func:`raflora.federation.round.close_round`, the metrics line and
the checkpoint from :func:`raflora.runtimes.folder.record_round` -- the calls the embedded runtime
makes, in the same order, so both write the same ``metrics.jsonl``.

Evaluation is the server's (the global model on the task's test split), so the client-side
evaluation round of :meth:`Strategy.start` is empty.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from raflora.federation.round import client_download, close_round, dropped_clients, server_fill
from raflora.federation.transport import pack
from raflora.runtimes.folder import record_round
from raflora.federation.setup import RunSetup
from raflora.federation.state import FederationState
from raflora.runtimes.flower.records import (
    ReplyError,
    evaluate_request,
    read_evaluate_reply,
    read_train_reply,
    train_request,
)

logger = logging.getLogger(__name__)


class RafloraStrategy(Strategy):
    """Drives ``setup``/``state`` one round per ``configure_train`` + ``aggregate_train``.

    ``nodes`` maps each client index to the Flower node that plays it (see
    :func:`raflora.runtimes.flower.server_app.discover_clients`).
    """

    def __init__(self, setup: RunSetup, state: FederationState, nodes: dict[int, int],
                 say: Callable[[str], None] | None = None) -> None:
        self.setup, self.state, self.nodes = setup, state, nodes
        self.clients = {node: client for client, node in nodes.items()}
        self.say = say or (lambda line: None)
        self._round: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        setup, state = self.setup, self.state
        self.grid = grid  # the methods without a global model ask their clients to evaluate (aggregate_train)
        round_ = state.round + 1  # server_round restarts at 1 when a run is resumed
        sampled = setup.sample_clients(round_)
        dropped = dropped_clients(setup, round_, sampled)  # simulated failures: never asked
        downs, messages = {}, []
        for client in (c for c in sampled if c not in dropped):
            start, packet, downs[client] = client_download(setup, state, client)
            dtype = next(iter(start.values())).A.dtype
            content = train_request(round_, client, setup.ranks[client], packet, dtype, state.head, state.base)
            messages.append(Message(content, dst_node_id=self.nodes[client], message_type=MessageType.TRAIN,
                                    group_id=str(round_)))
        self._round = {"round": round_, "sampled": sampled, "dropped": dropped, "downs": downs,
                       "began": time.perf_counter()}
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        setup, r = self.setup, self._round
        turns, refused = {}, {}
        for reply in replies:
            client = self.clients.get(reply.metadata.src_node_id)
            if client not in r["downs"] or client in turns:
                continue  # not asked this round, or a second answer
            try:
                if reply.has_error():
                    raise ReplyError(f"the client failed: {reply.error.reason}")
                turns[client] = read_train_reply(reply.content, client, self.state.head, r["downs"][client],
                                                 server_fill(setup))
            except ReplyError as err:
                refused[client] = f"client {client!r}: {err}"
        for client in r["sampled"]:
            if client not in turns and client not in refused and client not in r["dropped"]:
                refused[client] = f"client {client!r}: no reply"
        evaluate = (lambda: self.evaluate_clients(sorted(turns))) if setup.method.private else None
        record = close_round(setup, self.state, r["round"], r["sampled"], turns,
                             [{"client": c, "module": None, "reason": why} for c, why in sorted(refused.items())],
                             r["began"], bytes_down=sum(r["downs"].values()), evaluate_clients=evaluate,
                             dropped=r["dropped"])
        record_round(setup, self.state, record, self.say)
        return None, round_metrics(record, setup.task.metric)

    def evaluate_clients(self, clients: list[int]) -> dict[int, dict[str, float]]:
        """Each client's evaluation of its own model (the new global part with what it kept)."""
        setup, state = self.setup, self.state
        messages = []
        for client in clients:
            rank = setup.ranks[client]
            start = state.starts[rank]
            packet = pack(start, setup.config.federation.transport_dtype, setup.method.uploads)
            dtype = next(iter(start.values())).A.dtype
            content = evaluate_request(state.round + 1, client, rank, packet, dtype, state.head)
            messages.append(Message(content, dst_node_id=self.nodes[client], message_type=MessageType.EVALUATE,
                                    group_id=f"{state.round + 1}-evaluate"))
        out = {}
        for reply in self.grid.send_and_receive(messages, timeout=3600.0):
            client = self.clients.get(reply.metadata.src_node_id)
            if client in clients and not reply.has_error():
                try:
                    out[client] = read_evaluate_reply(reply.content)
                except ReplyError as err:
                    self.say(f"client {client}: {err}")
        return {c: out[c] for c in sorted(out)}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # the server evaluates the global model inside the round (close_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        c = self.setup.config
        logger.info("raflora strategy: method %s, %d clients, ranks %s", c.federation.method.name,
                    c.federation.num_clients, sorted(set(self.setup.ranks)))


def round_metrics(record: dict, metric: str) -> MetricRecord:
    """The round's scalar metrics as Flower keeps them in its history (metrics.jsonl has them all)."""
    keys = ("round", "accepted", "bytes_up", "bytes_down", metric, "loss", "train_loss", "rho_rmin")
    values = {k: record.get(k) for k in keys}
    return MetricRecord({k: v for k, v in values.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
