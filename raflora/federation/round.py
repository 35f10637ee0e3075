"""One federated round: sampled clients train from their start factors, the server aggregates,
merges (flora, florist), averages the head, computes diagnostics and evaluates the global model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from raflora.aggregation import NoValidUpdates, aggregate
from raflora.client.train import num_local_steps, train_local
from raflora.federation.diagnostics import round_diagnostics
from raflora.federation.setup import RunSetup
from raflora.federation.state import FederationState
from raflora.federation.transport import Packet, pack, receive, transmit, wire_size
from raflora.lora import ClientUpdate, LoRAFactors


def method_options(setup: RunSetup, num_sampled: int) -> dict:
    f = setup.config.federation
    if f.method == "raflora":
        return {"rank_levels": setup.levels}
    if f.method == "florist":
        return {"tau": f.tau}
    if f.method == "fedsa" and f.sfed_alpha > 0:
        return {"sfed_alpha": f.sfed_alpha, "num_clients": num_sampled}
    return {}


def client_start(setup: RunSetup, state: FederationState, client: int, rank: int) -> dict[str, LoRAFactors]:
    """The factors ``client`` starts from; fedsa clients put back their own ``B``."""
    start = state.starts[rank]
    own = state.own_b.get(client) if setup.config.federation.method == "fedsa" else None
    if own is None:
        return dict(start)
    return {m: LoRAFactors(f.A, own[m], f.scale) for m, f in start.items()}


def download_bytes(setup: RunSetup, state: FederationState) -> int:
    """What one client receives: flora/florist send the whole global stack after round 1."""
    dtype = setup.config.federation.transport_dtype
    if state.base and state.delta:  # state.base is only kept by methods that merge into the base
        stack = {m: LoRAFactors(A, B, 1.0) for m, (B, A) in state.delta.items()}
        return wire_size(stack, dtype, "AB")
    return 0


def average_head(heads: dict[int, dict[str, Tensor]], weights: dict) -> dict[str, Tensor]:
    keys = next(iter(heads.values())).keys()
    total = sum(weights[c] for c in heads)
    return {k: sum((weights[c] / total) * heads[c][k] for c in heads) for k in keys}


@dataclass
class ClientTurn:
    """What one sampled client sends back in a round, and the bytes it cost both ways."""

    update: ClientUpdate
    head: dict[str, Tensor]
    loss: float
    diverged: bool
    bytes_down: int
    bytes_up: int


def client_download(
    setup: RunSetup, state: FederationState, client: int
) -> tuple[dict[str, LoRAFactors], Packet, int]:
    """What the server sends ``client`` this round: its start factors (before the wire), the packet
    they travel in (encoded once, in ``transport_dtype``) and the bytes the client receives
    (flora/florist: the global stack; otherwise the packet's wire bytes)."""
    start = client_start(setup, state, client, setup.ranks[client])
    fed = setup.config.federation
    packet = pack(start, fed.transport_dtype, setup.method.uploads)
    return start, packet, download_bytes(setup, state) or len(packet.wire)


def train_client(
    setup: RunSetup, round_: int, client: int, start: dict[str, LoRAFactors], head: dict[str, Tensor],
    on_step: Callable[[], None] | None = None,
):
    """``client`` trains its own rank's adapter from ``start`` (as received) on its own examples."""
    fed = setup.config.federation
    return train_local(
        setup.model, setup.task, setup.client_examples(client), setup.ranks[client], start, head, setup.config.train,
        seed=setup.client_seed(round_, client), lr_at=lambda f: setup.lr_at(round_, f),
        train_a=fed.method != "ffa", on_step=on_step,
    )


def run_client(
    setup: RunSetup, state: FederationState, round_: int, client: int, on_step: Callable[[], None] | None = None
) -> ClientTurn:
    """A client's part of round ``round_``: its start factors go down the wire (really encoded in
    ``transport_dtype``), it trains on its own examples, its factors come back up the wire."""
    fed = setup.config.federation
    start, packet, bytes_down = client_download(setup, state, client)
    start = receive(packet, start, fed.transport_dtype)
    local = train_client(setup, round_, client, start, state.head, on_step)
    factors, nbytes = transmit(local.factors, fed.transport_dtype, setup.method.uploads)
    return ClientTurn(ClientUpdate(client, factors, local.num_examples), local.head, local.loss, local.diverged,
                      bytes_down=bytes_down, bytes_up=nbytes)


def run_round(
    setup: RunSetup, state: FederationState, round_: int, on_step: Callable[[], None] | None = None
) -> dict:
    """Run round ``round_`` (1-based), update ``state`` in place, return the round's metrics."""
    began = time.perf_counter()
    sampled = setup.sample_clients(round_)
    turns = {client: run_client(setup, state, round_, client, on_step) for client in sampled}
    return close_round(setup, state, round_, sampled, turns, [], began)


def close_round(
    setup: RunSetup, state: FederationState, round_: int, sampled: list[int], turns: dict[int, ClientTurn],
    refused: list[dict], began: float, bytes_down: int | None = None,
) -> dict:
    """The server's part of round ``round_`` once the clients' ``turns`` are in: aggregate, merge,
    diagnose, evaluate; update ``state`` in place and return the round's metrics. ``refused`` lists
    clients whose reply never made a turn (``{"client", "module", "reason"}``, reported first);
    ``bytes_down`` defaults to the turns' own."""
    config = setup.config
    fed, seed = config.federation, config.run.seed
    updates, heads, losses, diverged = [], {}, {}, []
    bytes_up = 0
    for client in sampled:
        if client not in turns:
            continue
        turn = turns[client]
        bytes_up += turn.bytes_up
        updates.append(turn.update)
        heads[client], losses[client] = turn.head, turn.loss
        if turn.diverged:
            diverged.append(client)
    if bytes_down is None:
        bytes_down = sum(turn.bytes_down for turn in turns.values())
    record = {"round": round_, "method": fed.method, "clients": sampled,
              "ranks": [setup.ranks[c] for c in sampled], "diverged": diverged}
    rejected = list(refused)
    try:
        # workers: the modules are factorized side by side on run.threads threads (bit-identical
        # to one thread at a time, see raflora.aggregation.workers)
        result = aggregate(fed.method, updates, modules=sorted(setup.shapes), shapes=setup.shapes, seed=seed,
                           workers=config.run.threads, **method_options(setup, len(sampled)))
    except NoValidUpdates as err:
        result = None
        rejected.append({"client": None, "module": None, "reason": str(err)})
    else:
        rejected += [{"client": c, "module": m, "reason": why} for c, m, why in result.rejected]
    accepted = {} if result is None else {
        c: w for c, w in result.weights.items() if all(torch.isfinite(t).all() for t in heads[c].values())
    }
    for c in sorted(set(result.weights if result else ()) - set(accepted)):
        rejected.append({"client": c, "module": None, "reason": f"client {c!r}: head contains NaN or Inf"})
    record.update(accepted=len(accepted), rejected=rejected)
    if result is not None and accepted:
        _apply(setup, state, result, {c: heads[c] for c in accepted}, accepted, updates)
        record.update(round_diagnostics(result, setup.r_min, setup.levels))
    finite = [losses[c] for c in accepted if math.isfinite(losses[c])]
    record["train_loss"] = sum(finite) / len(finite) if finite else float("nan")
    record.update(bytes_up=bytes_up, bytes_down=bytes_down)
    record.update({setup.task.metric: None, "loss": None})  # same fields on every line
    if round_ % config.eval.every == 0 or round_ == config.run.rounds:
        record.update(evaluate_global(setup, state))
    state.round = round_
    record["seconds"] = round(time.perf_counter() - began, 3)
    return record


def _apply(setup, state, result, heads, weights, updates) -> None:
    state.head = average_head(heads, weights)
    state.delta = {m: tuple(t.detach().clone() for t in result.delta_factors(m)) for m in result.modules}
    if result.merge_into_base:
        setup.model.add_to_base({m: result.delta(m) for m in result.modules})
        state.base = {m: setup.model.base_weight(m).detach().clone() for m in result.modules}
    state.starts = {
        r: {m: result.client_factors(m, r, setup.scales[r]) for m in result.modules} for r in sorted(set(setup.ranks))
    }
    if setup.config.federation.method == "fedsa":
        for u in updates:
            if u.client_id in result.weights:
                state.own_b[u.client_id] = {m: f.B.detach().clone() for m, f in u.factors.items()}


def evaluate_global(setup: RunSetup, state: FederationState) -> dict[str, float]:
    """The task's metric and loss of the global model: base weights plus this round's global update
    (already merged for flora/florist; fedsa: the mean of the clients' personalised updates)."""
    deltas = {} if state.base else {m: B @ A for m, (B, A) in state.delta.items()}
    head = state.head or setup.model.get_head(None)
    with setup.model.global_model(deltas, head) as model:
        return setup.task.evaluate(model, setup.test, setup.config.eval.batch_size)


def steps_in_round(setup: RunSetup, round_: int) -> int:
    return sum(
        num_local_steps(setup.config.train, len(setup.shards[c])) for c in setup.sample_clients(round_)
    )
