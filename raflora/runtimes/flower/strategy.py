"""raflora's round protocol as a Flower strategy.

Every method only arranges calls: the start factors, the bytes and the sampling come from
:mod:`raflora.federation.round` / :mod:`raflora.federation.setup`, the aggregation, merging,
diagnostics and evaluation from :func:`raflora.federation.round.close_round`, the metrics line and
the checkpoint from :func:`raflora.runtimes.folder.record_round` -- the calls the embedded runtime
makes, in the same order, so both write the same ``metrics.jsonl``.

Evaluation is the server's (the global model on the task's test split), so the client-side
evaluation round of :meth:`Strategy.start` is empty.

A reply's example count is not its weight: the server weights each client by what it knew before the
round (the roster's declared count, or the client's shard), and refuses a reply that says another.

Replies are matched to the messages sent by the message id Flower gave each message, never by the
sender: when a node is gone, the SuperLink answers for it, with its own reason, which the round
records. A round waits ``federation.round_timeout`` seconds, then closes with the replies it has.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from raflora.federation.round import client_download, close_round, dropped_clients, fill_missing
from raflora.federation.setup import RunSetup
from raflora.federation.state import FederationState
from raflora.federation.transport import pack
from raflora.runtimes.flower.records import (
    ReplyError,
    evaluate_request,
    read_evaluate_reply,
    read_train_reply,
    train_request,
)
from raflora.runtimes.flower.roster import Roster
from raflora.runtimes.folder import record_round

logger = logging.getLogger(__name__)


class RafloraStrategy(Strategy):
    """Drives ``setup``/``state`` one round per ``configure_train`` + ``aggregate_train``.

    ``roster`` knows which Flower node plays each client (:mod:`.roster`); nodes that join during
    the run become clients of the next round.
    """

    def __init__(
        self, setup: RunSetup, state: FederationState, roster: Roster, say: Callable[[str], None] | None = None
    ) -> None:
        self.setup, self.state, self.roster = setup, state, roster
        self.say = say or (lambda line: None)
        self._round: dict = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        setup, state = self.setup, self.state
        self.grid = grid  # the methods without a global model ask their clients to evaluate (aggregate_train)
        self.admit(self.roster.refresh(grid, retry=True))
        round_ = state.round + 1  # server_round restarts at 1 when a run is resumed
        sampled = setup.sample_clients(round_)
        dropped = dropped_clients(setup, round_, sampled)  # simulated failures: never asked
        downs, starts, messages = {}, {}, {}
        for client in (c for c in sampled if c not in dropped):
            start, packet, downs[client] = client_download(setup, state, client)
            starts[client] = start  # what the reply is read against: modules, shapes, rank, dtype
            dtype = next(iter(start.values())).A.dtype
            content = train_request(round_, client, setup.ranks[client], packet, dtype, state.head, state.base)
            messages[client] = Message(
                self.roster.stamp(content),
                dst_node_id=self.roster.node(client),
                message_type=MessageType.TRAIN,
                group_id=str(round_),
            )
        self._round = {
            "round": round_,
            "sampled": sampled,
            "dropped": dropped,
            "downs": downs,
            "starts": starts,
            "began": time.perf_counter(),
            "messages": messages,
        }
        return list(messages.values())

    def admit(self, joined: list[int]) -> None:
        """Clients that joined after the run was set up take part from this round on."""
        for client in joined:
            if client == len(self.setup.ranks):
                self.setup.ranks.append(self.roster.members[client].rank)
                self.setup.config.federation.num_clients = len(self.setup.ranks)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        setup, r = self.setup, self._round
        turns, refused = {}, {}
        for client, reply in matched(r["messages"], replies).items():
            try:
                if reply.has_error():
                    raise ReplyError(f"Flower error {reply.error.code}: {reply.error.reason}")
                turns[client] = read_train_reply(
                    reply.content, client, r["starts"][client], self.state.head, r["downs"][client], fill_missing(setup)
                )
            except ReplyError as err:
                refused[client] = f"client {client!r}: {err}"
        timeout = setup.config.federation.round_timeout
        for client in r["sampled"]:
            if client not in turns and client not in refused and client not in r["dropped"]:
                refused[client] = f"client {client!r}: no reply within federation.round_timeout = {timeout:g} s"
        if not turns:
            self.say(
                f"round {r['round']}: no client replied, the global model is unchanged "
                f"({'; '.join(refused[c] for c in sorted(refused))})"
            )
        evaluate = (lambda split: self.evaluate_clients(sorted(turns), split)) if setup.method.private else None
        # a declared node's weight is the count it declared when it joined (checked then), never its
        # reply's; a simulation node's is its shard of the config's partition, which the server knows
        counts = {c: self.roster.members[c].examples for c in turns} if self.roster.declared else None
        record = close_round(
            setup,
            self.state,
            r["round"],
            r["sampled"],
            turns,
            [{"client": c, "module": None, "reason": why} for c, why in sorted(refused.items())],
            r["began"],
            bytes_down=sum(r["downs"].values()),
            evaluate_clients=evaluate,
            dropped=r["dropped"],
            counts=counts,
        )
        record_round(setup, self.state, record, self.say)
        return None, round_metrics(record, setup.task.metric)

    def evaluate_clients(self, clients: list[int], split: str = "test") -> dict[int, dict[str, float]]:
        """Each client's evaluation of its own model (the new global part with what it kept) on
        ``split`` (``"test"``, or ``"validation"``: eval.validation's hold-out)."""
        setup, state = self.setup, self.state
        messages = {}
        for client in clients:
            rank = setup.ranks[client]
            start = state.starts[rank]
            packet = pack(start, setup.config.federation.transport_dtype, setup.method.uploads)
            dtype = next(iter(start.values())).A.dtype
            content = evaluate_request(state.round + 1, client, rank, packet, dtype, state.head, split)
            messages[client] = Message(
                self.roster.stamp(content),
                dst_node_id=self.roster.node(client),
                message_type=MessageType.EVALUATE,
                group_id=f"{state.round + 1}-evaluate",
            )
        replies = self.grid.send_and_receive(list(messages.values()), timeout=setup.config.federation.round_timeout)
        out = {}
        for client, reply in matched(messages, replies).items():
            try:
                if reply.has_error():
                    raise ReplyError(f"Flower error {reply.error.code}: {reply.error.reason}")
                out[client] = read_evaluate_reply(reply.content)
            except ReplyError as err:
                self.say(f"client {client}: no evaluation: {err}")
        return {c: out[c] for c in sorted(out)}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global model inside the round (close_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        c = self.setup.config
        logger.info(
            "raflora strategy: method %s, %d clients, ranks %s",
            c.federation.method.name,
            len(self.setup.ranks),
            sorted(set(self.setup.ranks)),
        )


def matched(sent: dict[int, Message], replies: Iterable[Message]) -> dict[int, Message]:
    """``{client: its reply}``: each reply goes to the message it answers (Flower's message id; the
    grid set it on each sent message); a second answer or one to no message of ours is dropped."""
    by_id = {msg.metadata.message_id: client for client, msg in sent.items()}
    out: dict[int, Message] = {}
    for reply in replies:
        client = by_id.get(reply.metadata.reply_to_message_id)
        if client is not None and client not in out:
            out[client] = reply
    return out


def round_metrics(record: dict, metric: str) -> MetricRecord:
    """The round's scalar metrics as Flower keeps them in its history (metrics.jsonl has them all)."""
    keys = ("round", "accepted", "bytes_up", "bytes_down", metric, "loss", "train_loss", "rho_rmin")
    values = {k: record.get(k) for k in keys}
    return MetricRecord(
        {
            k: v
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
    )
