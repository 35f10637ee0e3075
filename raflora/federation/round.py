"""One federated round: sampled clients train from their start factors, the server aggregates,
merges (methods that merge into the base), averages the head, computes diagnostics and evaluates.

The client half (:func:`client_download`, :func:`client_receive`, :func:`train_client`,
:func:`client_upload`) and the server half (:func:`close_round`) are separate so that both
runtimes drive the same code. What a method does is read from its object
(:class:`raflora.aggregation.method.Method`), never from its name. A client's private part
(``method.private``) is kept by the client (``kept``), never by the server.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from raflora.aggregation import NoValidUpdates
from raflora.client.train import LocalResult, num_local_steps, train_local
from raflora.federation.diagnostics import round_diagnostics
from raflora.federation.setup import RunSetup, derived_seed
from raflora.federation.state import FederationState
from raflora.federation.transport import Packet, pack, receive, transmit, wire_size
from raflora.federation.turn_checks import check_turns
from raflora.lora import ClientUpdate, LoRAFactors

Kept = dict[str, Tensor]  # module -> the private factor a client keeps between rounds


def download_bytes(setup: RunSetup, state: FederationState) -> int:
    """What one client receives when the method merges into the base: the whole global stack
    (after round 1); 0 otherwise (the packet's own bytes count)."""
    if setup.method.merges_into_base and state.delta:
        stack = {m: LoRAFactors(A=f.A, B=f.B, scale=1.0) for m, f in state.delta.items()}
        return wire_size(stack, setup.config.federation.transport_dtype, "AB")
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


def fill_missing(setup: RunSetup):
    """How a receiver, server or client, fills a factor that did not travel (the method decides:
    :meth:`~raflora.aggregation.method.Method.missing_part`)."""
    seed = setup.config.run.seed
    return lambda module, part, rank, shape: setup.method.missing_part(module, part, rank, shape, seed)


def client_download(setup: RunSetup, state: FederationState, client: int) -> tuple[dict[str, LoRAFactors], Packet, int]:
    """What the server sends ``client`` this round: its rank's start factors (before the wire), the
    packet they travel in (encoded once, in ``transport_dtype``) and the bytes the client receives
    (methods that merge into the base: the global stack; otherwise the packet's wire bytes)."""
    start = state.starts[setup.ranks[client]]
    packet = pack(start, setup.config.federation.transport_dtype, setup.method.uploads)
    return start, packet, download_bytes(setup, state) or len(packet.wire)


def client_receive(setup: RunSetup, packet: Packet, sent: Mapping[str, LoRAFactors]) -> dict[str, LoRAFactors]:
    """The start factors as the client decodes them (in-process: ``sent`` when the round trip is exact)."""
    return receive(packet, sent, setup.config.federation.transport_dtype, setup.method.uploads, fill_missing(setup))


def train_client(
    setup: RunSetup,
    round_: int,
    client: int,
    received: dict[str, LoRAFactors],
    head: dict[str, Tensor],
    kept: Kept | None = None,
    on_step: Callable[[], None] | None = None,
) -> LocalResult:
    """``client`` trains its own rank's adapter from what it ``received`` (with its own private part
    put back from ``kept``) on its own examples."""
    method = setup.method
    return train_local(
        setup.model,
        setup.task,
        setup.client_examples(client),
        setup.ranks[client],
        method.client_start(received, kept),
        head,
        setup.config.train,
        seed=setup.client_seed(round_, client),
        lr_at=lambda f: setup.lr_at(round_, f),
        train_a=method.trains_a,
        on_step=on_step,
    )


def run_client(
    setup: RunSetup,
    state: FederationState,
    round_: int,
    client: int,
    kept: dict[int, Kept],
    on_step: Callable[[], None] | None = None,
) -> ClientTurn:
    """A client's part of round ``round_`` in one process: its start factors go down the wire
    (really encoded in ``transport_dtype``), it trains on its own examples and stores its private
    part in ``kept[client]``, its factors come back up the wire."""
    fed = setup.config.federation
    start, packet, bytes_down = client_download(setup, state, client)
    local = train_client(
        setup, round_, client, client_receive(setup, packet, start), state.head, kept.get(client), on_step
    )
    if setup.method.private:
        kept[client] = setup.method.client_keeps(local.factors)
    factors, nbytes = transmit(local.factors, fed.transport_dtype, setup.method.uploads, fill_missing(setup))
    return ClientTurn(
        ClientUpdate(client, factors, local.num_examples),
        local.head,
        local.loss,
        local.diverged,
        bytes_down=bytes_down,
        bytes_up=nbytes,
    )


def run_round(
    setup: RunSetup,
    state: FederationState,
    round_: int,
    kept: dict[int, Kept],
    on_step: Callable[[], None] | None = None,
) -> dict:
    """Run round ``round_`` (1-based) in one process, update ``state`` and ``kept`` in place, return
    the round's metrics."""
    began = time.perf_counter()
    sampled = setup.sample_clients(round_)
    dropped = dropped_clients(setup, round_, sampled)
    turns = {
        client: run_client(setup, state, round_, client, kept, on_step) for client in sampled if client not in dropped
    }
    evaluate = None
    if setup.method.private:
        # The clients that took part this round, as the Flower strategy asks them to evaluate.
        evaluate = lambda split: {c: evaluate_client(setup, state, c, kept[c], split) for c in turns if c in kept}  # noqa: E731
    return close_round(setup, state, round_, sampled, turns, [], began, evaluate_clients=evaluate, dropped=dropped)


def dropped_clients(setup: RunSetup, round_: int, sampled: list[int]) -> list[int]:
    """The sampled clients that fail in round ``round_`` (``federation.dropout``, simulated): that
    share of them, rounded half up, drawn from the run seed and the round alone, so both runtimes
    and a resumed run drop the same clients."""
    count = math.floor(setup.config.federation.dropout * len(sampled) + 0.5)
    if count <= 0:
        return []
    rng = random.Random(derived_seed("dropout", setup.config.run.seed, round_))
    return sorted(rng.sample(sorted(sampled), count))


def close_round(
    setup: RunSetup,
    state: FederationState,
    round_: int,
    sampled: list[int],
    turns: dict[int, ClientTurn],
    refused: list[dict],
    began: float,
    bytes_down: int | None = None,
    evaluate_clients: Callable[[str], dict[int, dict[str, float]]] | None = None,
    dropped: Sequence[int] = (),
    counts: Mapping[int, int] | None = None,
) -> dict:
    """The server's part of round ``round_`` once the clients' ``turns`` are in: aggregate, merge,
    diagnose, evaluate; update ``state`` in place and return the round's metrics. ``refused`` lists
    clients whose reply never made a turn (``{"client", "module", "reason"}``, reported first);
    ``bytes_down`` defaults to the turns' own. Methods whose clients keep a private part have no
    global model: ``evaluate_clients(split)`` returns each client's own evaluation (personalised
    models) on ``"validation"`` or ``"test"``.
    ``dropped``: the sampled clients that failed (``federation.dropout``), listed in the metrics.
    A method that asks for the previous global update (``Method.wants_previous``: carryover, raflora
    with ``empty_partition = "keep"``) gets it; what it keeps of it is the method's own rule.
    Each turn is first checked against what the server knew before the round
    (:func:`~raflora.federation.turn_checks.check_turns`: its example count, which is ``counts``'s
    (default: the client's shard of the partition), its rank and factor dtype, its head); a refused
    turn reaches neither the aggregate nor the head. No client's share of the round's weight is over
    ``federation.max_client_weight``."""
    config = setup.config
    updates, heads, losses, diverged = [], {}, {}, []
    bytes_up = sum(turns[c].bytes_up for c in sampled if c in turns)
    for c in sampled:
        if c in turns and turns[c].diverged:
            diverged.append(c)
    reference = state.head or setup.model.get_head(None)
    known = counts if counts is not None else {c: len(setup.shards[c]) for c in turns}
    dtype = next(iter(next(iter(state.starts.values())).values())).A.dtype
    passed, refused_turns = check_turns(
        {c: turns[c] for c in sampled if c in turns},
        known,
        setup.ranks,
        dtype,
        reference,
        config.federation.max_norm_ratio,
    )
    for client in sampled:
        if client not in passed:
            continue
        turn = passed[client]
        updates.append(turn.update)
        heads[client], losses[client] = turn.head, turn.loss
    if bytes_down is None:
        bytes_down = sum(turn.bytes_down for turn in turns.values())
    record = {
        "round": round_,
        "method": setup.method.name,
        "clients": sampled,
        "ranks": [setup.ranks[c] for c in sampled],
        "dropped": sorted(dropped),
        "diverged": diverged,
    }
    rejected = list(refused) + refused_turns
    try:
        # workers: the modules are factorized side by side on run.threads threads (bit-identical
        # to one thread at a time, see raflora.aggregation.workers)
        result = setup.method.aggregate(
            updates,
            modules=sorted(setup.shapes),
            shapes=setup.shapes,
            seed=config.run.seed,
            workers=config.run.threads,
            max_norm_ratio=config.federation.max_norm_ratio,
            previous=state.delta if setup.method.wants_previous else None,
            top_rank=max(setup.levels),
            max_weight=config.federation.max_client_weight,
        )
    except NoValidUpdates as err:
        result = None
        rejected.append({"client": None, "module": None, "reason": str(err)})
    else:
        rejected += [{"client": c, "module": m, "reason": why} for c, m, why in result.rejected]
    accepted = {} if result is None else dict(result.weights)
    record.update(accepted=len(accepted), rejected=rejected)
    if result is not None and accepted:
        _apply(setup, state, result, {c: heads[c] for c in accepted}, accepted)
        record.update(round_diagnostics(result, setup.r_min, setup.levels))
    finite = [losses[c] for c in accepted if math.isfinite(losses[c])]
    record["train_loss"] = sum(finite) / len(finite) if finite else float("nan")
    record.update(bytes_up=bytes_up, bytes_down=bytes_down)
    record.update({setup.task.metric: None, "loss": None})  # same fields on every line
    last = round_ == config.run.rounds
    if setup.validation:
        record.update({f"val_{setup.task.metric}": None, "val_loss": None})
    if round_ % config.eval.every == 0 or last:
        # With a validation set, every evaluated round is scored on it (what a choice may read) and
        # the test split once, after the last round (the reported number).
        for split in ("validation", "test") if setup.validation else ("test",):
            if split == "test" and setup.validation and not last:
                continue
            if setup.method.private:
                scores = personal_summary(setup.task.metric, evaluate_clients(split) if evaluate_clients else {})
            else:
                scores = evaluate_global(setup, state, split)
            record.update(scores if split == "test" else {f"val_{k}": v for k, v in scores.items()})
    state.round = round_
    record["seconds"] = round(time.perf_counter() - began, 3)
    return record


def _apply(setup, state, result, heads, weights) -> None:
    method = setup.method
    state.head = average_head(heads, weights)
    if not method.private:  # a method whose clients keep a part has no global update to keep
        state.delta = {m: result.delta_factors(m).clone() for m in result.modules}
    if method.merges_into_base:
        setup.model.add_to_base({m: result.delta(m) for m in result.modules})
        state.base = setup.model.base_weights(result.modules)
    state.starts = {
        r: {m: result.client_factors(m, r, setup.scales[r]) for m in result.modules} for r in sorted(set(setup.ranks))
    }


def split_examples(setup: RunSetup, split: str) -> list:
    """The examples of ``split``: ``"test"`` or ``"validation"`` (``eval.validation``'s hold-out)."""
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    return setup.test if split == "test" else setup.validation


def evaluate_global(setup: RunSetup, state: FederationState, split: str = "test") -> dict[str, float]:
    """The task's metric and loss of the global model on ``split``: base weights plus this round's
    global update (already merged for methods that merge into the base)."""
    deltas = {} if state.base else {m: f.dense() for m, f in state.delta.items()}
    head = state.head or setup.model.get_head(None)
    with setup.model.global_model(deltas, head) as model:
        return setup.task.evaluate(model, split_examples(setup, split), setup.config.eval.batch_size)


def evaluate_client(
    setup: RunSetup, state: FederationState, client: int, kept: Kept, split: str = "test"
) -> dict[str, float]:
    """A client's own (personalised) model on ``split``: the start it would get next round (the
    new global part, as it arrives over the wire, with its own private part) and the global head."""
    sent = state.starts[setup.ranks[client]]
    received = client_receive(setup, pack(sent, setup.config.federation.transport_dtype, setup.method.uploads), sent)
    start = setup.method.client_start(received, kept)
    deltas = {m: f.delta() for m, f in start.items()}
    head = state.head or setup.model.get_head(None)
    with setup.model.global_model(deltas, head) as model:
        return setup.task.evaluate(model, split_examples(setup, split), setup.config.eval.batch_size)


def personal_summary(metric: str, by_client: Mapping[int, Mapping[str, float]]) -> dict:
    """Mean and spread over clients of their personalised models' metric and loss."""
    if not by_client:
        return {}
    values = [v[metric] for v in by_client.values()]
    losses = [v["loss"] for v in by_client.values()]
    return {
        metric: statistics.fmean(values),
        "loss": statistics.fmean(losses),
        f"{metric}_std": statistics.pstdev(values),
        f"{metric}_by_client": {str(c): v[metric] for c, v in by_client.items()},
    }


def steps_in_round(setup: RunSetup, round_: int) -> int:
    sampled = setup.sample_clients(round_)
    dropped = dropped_clients(setup, round_, sampled)
    return sum(num_local_steps(setup.config.train, len(setup.shards[c])) for c in sampled if c not in dropped)
