"""The Flower ClientApp: one client's part of a round, through raflora's own client code.

A SuperNode plays the client whose index is its ``partition-id`` (``node_config``; the simulation
numbers its virtual nodes 0..N-1, a deployed SuperNode gets it from ``--node-config``). It answers
the server's QUERY with that id, and each TRAIN message by training its rank's adapter from the
factors it received (:func:`raflora.federation.round.train_client`, as in the embedded runtime).

The run (task, data, shards, model) is built once per process from the config and cached in this
module: a Ray actor serves many virtual clients, a deployed SuperNode starts a process per message.
What a client keeps for itself (``method.private``, FedSA-LoRA's ``B``) lives in the node's
``context.state`` and never crosses the wire; an EVALUATE message asks the node to evaluate its
own model (the methods without a global model).
"""

from __future__ import annotations

import tomllib

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from raflora.config_io import config_from_dict
from raflora.federation.round import client_fill, evaluate_client, train_client
from raflora.federation.setup import RunSetup, build_setup
from raflora.federation.transport import pack
from raflora.runtimes.flower.records import (
    evaluate_reply,
    read_train_request,
    record_tensors,
    run_config_toml,
    tensors_record,
    train_reply,
)

KEPT = "raflora-kept"  # context.state key of the client's own kept factors

_SETUPS: dict[str, RunSetup] = {}  # config TOML -> the run built from it, one per process
_MERGED: dict[int, bool] = {}      # id(setup) -> its model holds a merged base


def client_setup(config_toml: str) -> RunSetup:
    if config_toml not in _SETUPS:
        _SETUPS.clear()  # one run per process at a time: a new config replaces the old one
        _MERGED.clear()
        _SETUPS[config_toml] = build_setup(config_from_dict(tomllib.loads(config_toml)))
    return _SETUPS[config_toml]


def partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("this SuperNode has no partition-id; start it with --node-config \"partition-id=K\"")
    return int(context.node_config["partition-id"])


def _kept(context: Context) -> dict | None:
    return record_tensors(context.state[KEPT]) if KEPT in context.state else None


def train(setup: RunSetup, content: RecordDict, me: int, context: Context | None = None) -> RecordDict:
    """Train as client ``me`` on the request ``content``; the reply's content. ``context``: the
    node's, whose ``state`` holds what this client keeps between rounds."""
    request = read_train_request(content, client_fill(setup))
    client, round_ = request["client"], request["round"]
    if client != me:
        raise ValueError(f"this SuperNode is client {me}, the server asked for client {client}")
    if request["rank"] != setup.ranks[client]:
        raise ValueError(f"client {client} has rank {setup.ranks[client]}, the server sent rank {request['rank']}")
    # flora/florist: the server's merged base; otherwise the pretrained one (put back only if this
    # process's model still holds a merged base from an earlier message)
    if request["base"] or _MERGED.get(id(setup)):
        setup.model.load_base(request["base"] or setup.base0)
        _MERGED[id(setup)] = bool(request["base"])
    method = setup.method
    local = train_client(setup, round_, client, request["start"], request["head"],
                         _kept(context) if context is not None else None)
    if method.private and context is not None:
        context.state[KEPT] = tensors_record(method.client_keeps(local.factors))
    fed = setup.config.federation
    dtype = next(iter(local.factors.values())).A.dtype
    packet = pack(local.factors, fed.transport_dtype, setup.method.uploads)
    return train_reply(packet, dtype, local.head, local.loss, local.diverged, local.num_examples)


def evaluate(setup: RunSetup, content: RecordDict, me: int, context: Context) -> RecordDict:
    """Evaluate client ``me``'s own model: the global part it was sent with the part it kept."""
    request = read_train_request(content, client_fill(setup))
    if request["client"] != me:
        raise ValueError(f"this SuperNode is client {me}, the server asked for client {request['client']}")
    from raflora.federation.state import FederationState

    kept = _kept(context) or {}
    state = FederationState(starts={request["rank"]: request["start"]}, head=request["head"])
    return evaluate_reply(evaluate_client(setup, state, me, kept))


def build_client_app(config_toml: str | None = None) -> ClientApp:
    """A ClientApp for the run in ``config_toml`` (the resolved config, as ``config.toml`` of a run
    folder); ``None`` reads it from the run config key ``config-toml`` or the path in ``config``."""
    app = ClientApp()

    def config_text(context: Context) -> str:
        return config_toml if config_toml is not None else run_config_toml(context.run_config)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"node": ConfigRecord({"partition-id": partition_id(context)})}), reply_to=msg)

    @app.train()
    def train_message(msg: Message, context: Context) -> Message:
        setup = client_setup(config_text(context))
        return Message(train(setup, msg.content, partition_id(context), context), reply_to=msg)

    @app.evaluate()
    def evaluate_message(msg: Message, context: Context) -> Message:
        setup = client_setup(config_text(context))
        return Message(evaluate(setup, msg.content, partition_id(context), context), reply_to=msg)

    return app


# The entry point for `flwr run` and deployed SuperNodes: the config comes from the run config.
app = build_client_app()
