"""The Flower ClientApp: one client's part of a round, through raflora's own client code.

A SuperNode says who it is in its ``--node-config`` (:mod:`.node`): a deployed node declares its
``client-id``, its ``rank`` and its own ``data-file``; a simulation node only has its
``partition-id`` and plays that client of the config. It answers the server's QUERY with its client
id, rank and example count, and each TRAIN message by training its rank's adapter from the factors
it received (:func:`raflora.federation.round.train_client`, as in the embedded runtime).

The run (task, data, model) is built once per process and cached in this module: a Ray actor
serves many virtual clients, a deployed SuperNode starts a process per message. What a client
keeps for itself (``method.private``, FedSA-LoRA's ``B``) lives in the node's ``context.state`` and
never crosses the wire; an EVALUATE message asks the node to evaluate its own model (the methods
without a global model).
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from raflora.federation.round import evaluate_client, fill_missing, train_client
from raflora.federation.setup import RunSetup
from raflora.federation.transport import pack
from raflora.runtimes.flower.node import Node, build_node_setup, node_identity, node_of
from raflora.runtimes.flower.records import (
    evaluate_reply,
    evaluate_split,
    read_run,
    read_train_request,
    record_tensors,
    tensors_record,
    train_reply,
)
from raflora.runtimes.flower.run_config import config_data

KEPT = "raflora-kept"  # context.state key of the client's own kept factors

_SETUPS: dict[str, RunSetup] = {}  # (config[, node, labels]) -> the run built from them, one per process
_MERGED: dict[int, bool] = {}  # id(setup) -> its model holds a merged base


def client_setup(data: dict[str, Any], node: Node, labels: list[str] | None = None) -> RunSetup:
    """The node's run, built from the config ``data`` the first time this process needs it."""
    # simulation nodes share one run (a Ray actor serves many of them); a declared node has its own
    own = [node.__dict__, labels] if node.declared else []
    key = json.dumps([data, *own], sort_keys=True, default=str)
    if key not in _SETUPS:
        _SETUPS.clear()  # one run per process at a time: a new config replaces the old one
        _MERGED.clear()
        _SETUPS[key] = build_node_setup(data, node, labels)
    return _SETUPS[key]


def local_client(node: Node) -> int:
    """The node's client index in its own setup: its partition id, or 0 in its one-client run."""
    return 0 if node.declared else node.partition_id


def _kept(context: Context) -> dict | None:
    return record_tensors(context.state[KEPT]) if KEPT in context.state else None


def train(setup: RunSetup, content: RecordDict, node: Node, context: Context | None = None) -> RecordDict:
    """Train as ``node`` on the request ``content``; the reply's content. ``context``: the node's,
    whose ``state`` holds what this client keeps between rounds."""
    request = read_train_request(content, fill_missing(setup))
    me = _check_request(setup, request, node)
    # flora/florist: the server's merged base; otherwise the pretrained one (put back only if this
    # process's model still holds a merged base from an earlier message)
    if request["base"] or _MERGED.get(id(setup)):
        setup.model.load_base(request["base"] or setup.base0)
        _MERGED[id(setup)] = bool(request["base"])
    method = setup.method
    local = train_client(
        setup, request["round"], me, request["start"], request["head"], _kept(context) if context is not None else None
    )
    if method.private and context is not None:
        context.state[KEPT] = tensors_record(method.client_keeps(local.factors))
    fed = setup.config.federation
    dtype = next(iter(local.factors.values())).A.dtype
    packet = pack(local.factors, fed.transport_dtype, setup.method.uploads)
    return train_reply(packet, dtype, local.head, local.loss, local.diverged, local.num_examples)


def _check_request(setup: RunSetup, request: dict, node: Node) -> int:
    """The local client index the request is for; ValueError when it is not this node's."""
    me = local_client(node)
    if not node.declared and request["client"] != me:
        raise ValueError(f"this SuperNode is client {me}, the server asked for client {request['client']}")
    if request["rank"] != setup.ranks[me]:
        raise ValueError(
            f"client {node.client_id!r} has rank {setup.ranks[me]}, the server sent rank {request['rank']}"
        )
    # A declared node's scale depends on the whole federation (e.g. sfed: the clients per round),
    # which only the server knows: the factors it sends carry it.
    scale = next(iter(request["start"].values())).scale
    if node.declared and scale != setup.scales[request["rank"]]:
        setup.scales[request["rank"]] = scale
        setup.model.set_scale(request["rank"], scale)
    return me


def evaluate(setup: RunSetup, content: RecordDict, node: Node, context: Context) -> RecordDict:
    """Evaluate the node's own model (the global part it was sent with the part it kept) on its test data."""
    request = read_train_request(content, fill_missing(setup))
    me = _check_request(setup, request, node)
    from raflora.federation.state import FederationState

    kept = _kept(context) or {}
    state = FederationState(starts={request["rank"]: request["start"]}, head=request["head"])
    return evaluate_reply(evaluate_client(setup, state, me, kept, evaluate_split(content)))


def identity(node: Node, rank: int, examples: int) -> RecordDict:
    """The QUERY reply: who this node is, its rank and how many training examples it holds."""
    return RecordDict(
        {
            "node": ConfigRecord(
                {
                    "client-id": node.client_id,
                    "rank": rank,
                    "examples": examples,
                    "partition-id": node.partition_id,
                    "declared": node.declared,
                }
            )
        }
    )


def build_client_app(config_toml: str | None = None) -> ClientApp:
    """A ClientApp that builds its run from the config each message carries (``run``, the server's),
    else from ``config_toml`` (the resolved config, as ``config.toml`` of a run folder), else from
    the run config (:mod:`.run_config`)."""
    app = ClientApp()

    def run_for(msg: Message, context: Context) -> tuple[dict[str, Any], Node, list[str] | None]:
        # the server's config travels with every message: a node needs no copy of the config file
        sent, labels = read_run(msg.content)
        text = sent if sent is not None else config_toml
        data = tomllib.loads(text) if text is not None else config_data(context.run_config)
        return data, node_of(context), labels

    def setup_for(msg: Message, context: Context) -> tuple[RunSetup, Node]:
        data, node, labels = run_for(msg, context)
        return client_setup(data, node, labels), node

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        data, node, labels = run_for(msg, context)
        return Message(identity(node, *node_identity(data, node, labels)), reply_to=msg)

    @app.train()
    def train_message(msg: Message, context: Context) -> Message:
        setup, node = setup_for(msg, context)
        return Message(train(setup, msg.content, node, context), reply_to=msg)

    @app.evaluate()
    def evaluate_message(msg: Message, context: Context) -> Message:
        setup, node = setup_for(msg, context)
        return Message(evaluate(setup, msg.content, node, context), reply_to=msg)

    return app


# The entry point for `flwr run` and deployed SuperNodes: the config comes from the run config.
app = build_client_app()
