"""raflora's aggregation as a Flower strategy for a user's own ServerApp: :class:`LoRAStrategy`.

The nodes run an ordinary PEFT training loop. Each train message carries, under ``"arrays"``, the
PEFT LoRA state dict (``get_peft_model_state_dict`` keys) that a node of its assigned rank starts
from, and under ``"config"`` its ``rank``, ``lora-alpha``, ``use-rslora``, ``trains-a`` and
``server-round``; round 1 carries no arrays (every node starts from its own PEFT init, ``B = 0``).
A reply carries the trained state dict as an ArrayRecord (``"arrays"``) and ``num-examples`` in a
MetricRecord (``"metrics"``). The strategy turns each reply into a
:class:`~raflora.lora.ClientUpdate` (:func:`raflora.peft_io.update_from_peft` at the scale
``scale(rank)`` it knows) and runs :func:`raflora.aggregation.aggregate`.

What a reply says is bounded, as in raflora's own runtime (docs/reliability.md): the rank of every
``lora_A`` is the node's assigned rank; the modules and shapes are those of round 1's result; the
weight is the count the server knows (``counts``, else the node's first readable reply, checked
once then: a positive integer below 10**12), and a reply that says another count is refused; no
node's share of a round exceeds ``max_weight``. A refused reply is logged with its reason and the
round goes on with the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from raflora.aggregation import AggregationResult, Method, NoValidUpdates, aggregate, method_of
from raflora.aggregation.validate import MAX_EXAMPLES, count_problem
from raflora.federation.diagnostics import round_diagnostics
from raflora.lora import ClientUpdate
from raflora.peft_io import peft_state_dict, update_from_peft
from raflora.runtimes.flower.records import record_tensors, tensors_record

Ranks = Mapping[int, int] | Sequence[int] | Callable[[int], int]


def lora_scale(lora_alpha: float, rank: int, use_rslora: bool = False) -> float:
    """PEFT's scaling of a LoRA layer of ``rank``: ``alpha / rank`` (``alpha / sqrt(rank)`` with rsLoRA)."""
    return lora_alpha / math.sqrt(rank) if use_rslora else lora_alpha / rank


def reply_update(content: RecordDict, node: int, rank: int, scale: float, known: int | None) -> ClientUpdate:
    """The update a reply of ``node`` (assigned ``rank``) carries, weighted by the count the server
    ``known`` (None: the reply's own, checked); ``ValueError`` with the reason it is refused."""
    arrays = [r for r in content.values() if isinstance(r, ArrayRecord)]
    metrics = [r for r in content.values() if isinstance(r, MetricRecord)]
    if len(arrays) != 1 or len(metrics) != 1:
        raise ValueError(f"{len(arrays)} ArrayRecords and {len(metrics)} MetricRecords, not one of each")
    said = metrics[0].get("num-examples")
    problem = count_problem(said)
    if problem:
        raise ValueError(f"num-examples must be a positive integer below 10**12, got {problem}")
    if known is not None and int(said) != known:
        raise ValueError(f"says {int(said)} examples, the server knows {known}")
    update = update_from_peft(record_tensors(arrays[0]), node, int(said), scale=scale)
    for module, f in update.factors.items():
        if f.rank != rank:
            raise ValueError(f"module {module!r}: rank {f.rank}, this node's rank is {rank}")
    return update


class LoRAStrategy(Strategy):
    """raflora's aggregation for PEFT LoRA nodes of any rank.

    ``method``: a name in ``raflora.aggregation.AGGREGATORS`` (options as ``method_options``) or a
    :class:`Method`; methods whose clients merge into the base (flora, florist) or keep a factor
    (fedsa) need more than an adapter and are refused. ``ranks``: each node's rank, by node id
    (a mapping), a function of the node id, or a list the nodes get in turn, by node id, when first
    seen. ``lora_alpha``/``use_rslora``: the nodes' ``LoraConfig`` (the scale of a rank-r node is
    PEFT's). ``counts``: each node's example count as the server knows it (default: its first
    readable reply's). ``max_weight``, ``max_norm_ratio``, ``seed``: as :func:`aggregate`'s.
    ``fraction_train``/``min_train_nodes``/``min_available_nodes``: as Flower's FedAvg;
    ``fraction_evaluate`` > 0 asks that share of the nodes to evaluate the start factors of their
    rank and averages their metrics by the counts the server knows.
    After each round ``result`` is the :class:`AggregationResult` (``save_peft_adapter`` writes it)
    and ``rejected[round]`` the refusals ``(node, module or None, reason)``.
    """

    def __init__(
        self,
        method: str | Method,
        ranks: Ranks,
        *,
        lora_alpha: float,
        use_rslora: bool = False,
        counts: Mapping[int, int] | None = None,
        max_weight: float = 0.5,
        max_norm_ratio: float = 10.0,
        seed: int = 0,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        fraction_evaluate: float = 0.0,
        method_options: Mapping | None = None,
    ) -> None:
        self.method = method_of(method, dict(method_options or {}), "LoRAStrategy")
        if self.method.merges_into_base or self.method.private:
            raise ValueError(f"{self.method.name}: a node needs more than its adapter (use raflora's own runtime)")
        if not 0 < fraction_train <= 1 or not 0 <= fraction_evaluate <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], fraction_evaluate in [0, 1]; got {fraction_train}")
        for node, n in (counts or {}).items():
            if count_problem(n):
                raise ValueError(f"counts: node {node}: {n!r} is not a positive integer below {MAX_EXAMPLES}")
        self.method.check_round(max_norm_ratio, None, max_weight)  # both bounds in range, before any round
        self.ranks, self.alpha, self.rslora = ranks, float(lora_alpha), use_rslora
        self.counts: dict[int, int] = {int(k): int(v) for k, v in (counts or {}).items()}
        self.max_weight, self.max_norm_ratio, self.seed = max_weight, max_norm_ratio, seed
        self.fraction_train, self.fraction_evaluate = fraction_train, fraction_evaluate
        self.min_train_nodes, self.min_available_nodes = min_train_nodes, min_available_nodes
        self.assigned: dict[int, int] = {}
        self.result: AggregationResult | None = None
        self.rejected: dict[int, list[tuple]] = {}
        self._asked: set[int] = set()  # the nodes sent a train message this round, each answered once

    # -- who gets what -----------------------------------------------------------------------------
    def rank_of(self, node: int) -> int:
        """The node's rank, assigned once (``ValueError`` for a rank below 1)."""
        if node not in self.assigned:
            if isinstance(self.ranks, Mapping):
                if node not in self.ranks:
                    raise ValueError(f"ranks: node {node} has no rank")
                rank = self.ranks[node]
            elif callable(self.ranks):
                rank = self.ranks(node)
            else:
                rank = self.ranks[len(self.assigned) % len(self.ranks)]
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"ranks: node {node}: rank {rank!r} is not a positive integer")
            self.method.check_ranks([*self.assigned.values(), rank])
            self.assigned[node] = rank
        return self.assigned[node]

    def scale(self, rank: int) -> float:
        return lora_scale(self.alpha, rank, self.rslora)

    def start_arrays(self, rank: int) -> ArrayRecord:
        """The PEFT state dict a node of ``rank`` starts from (empty before the first result)."""
        if self.result is None:
            return ArrayRecord()
        return tensors_record(peft_state_dict(self.result, rank, self.scale(rank)))

    def _messages(self, server_round, config, grid, fraction, kind) -> list[Message]:
        nodes = _sample(grid, fraction, self.min_train_nodes, self.min_available_nodes)
        out = []
        for node in sorted(nodes):  # a list of ranks goes to new nodes by node id
            rank = self.rank_of(node)
            task = ConfigRecord(
                {
                    **dict(config),
                    "server-round": server_round,
                    "rank": rank,
                    "lora-alpha": self.alpha,
                    "use-rslora": self.rslora,
                    "trains-a": self.method.trains_a,
                }
            )
            content = RecordDict({"arrays": self.start_arrays(rank), "config": task})
            out.append(Message(content, dst_node_id=node, message_type=kind))
        return out

    # -- Flower's Strategy -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self._messages(server_round, config, grid, self.fraction_train, MessageType.TRAIN)
        self._asked = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, refused = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ValueError(f"the node failed ({reply.error.reason})")
                if node not in self._asked:
                    raise ValueError("was sent no train message this round, or answered twice")
                self._asked.discard(node)
                rank = self.assigned[node]
                update = reply_update(reply.content, node, rank, self.scale(rank), self.counts.get(node))
            except Exception as err:  # anything unreadable: this reply is refused, the round goes on
                why = str(err) if isinstance(err, ValueError) else f"unreadable reply ({type(err).__name__}: {err})"
                refused.append((node, None, f"node {node}: {why}"))
                continue
            self.counts.setdefault(node, update.num_examples)
            updates.append(update)
        updates.sort(key=lambda u: u.client_id)  # replies come in any order; the sums do not
        try:
            result = self._aggregate(updates)
        except NoValidUpdates as err:
            result = None
            log(WARNING, "round %d: %s", server_round, err)
        refused += result.rejected if result else []
        self.rejected[server_round] = refused
        for *_, reason in refused:
            log(WARNING, "round %d: refused %s", server_round, reason)
        if result is None:  # Flower keeps the previous arrays; nodes start next round from the last result
            return None, MetricRecord({"accepted": 0, "rejected": len(refused)})
        self.result = result
        top = max(self.assigned[n] for n in result.weights)
        metrics = {"accepted": len(result.weights), "rejected": len(refused)}
        rho = round_diagnostics(result, min(result.client_ranks(result.modules[0]).values()), self._levels())
        if math.isfinite(rho["rho_rmin"]):
            metrics["rho_rmin"] = rho["rho_rmin"]
        log(INFO, "round %d: %s", server_round, metrics)
        return self.start_arrays(top), MetricRecord(metrics)

    def _levels(self) -> list[int]:
        return self.method.rank_partitions(list(self.assigned.values()))

    def _aggregate(self, updates: list[ClientUpdate]) -> AggregationResult:
        """``aggregate`` of the round's updates; from round 2 on the modules and shapes are round 1's."""
        previous = None
        if self.result is not None and self.method.wants_previous:
            previous = {m: self.result.delta_factors(m) for m in self.result.modules}
        method = self.method.bind(list(self.assigned.values()), len(updates))
        return aggregate(
            method,
            updates,
            modules=None if self.result is None else self.result.modules,
            shapes=None if self.result is None else self.result.shapes,
            seed=self.seed,
            max_norm_ratio=self.max_norm_ratio,
            max_weight=self.max_weight,
            previous=previous,
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0 or self.result is None:
            return []
        return self._messages(server_round, config, grid, self.fraction_evaluate, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Each metric averaged over the replies, weighted by the counts the server knows."""
        total, sums = 0, {}
        for reply in replies:
            n = self.counts.get(reply.metadata.src_node_id)
            if reply.has_error() or n is None:
                continue
            for record in reply.content.metric_records.values():
                for key, value in record.items():
                    if key != "num-examples" and isinstance(value, (int, float)) and math.isfinite(value):
                        sums[key] = sums.get(key, 0.0) + n * float(value)
            total += n
        return MetricRecord({k: v / total for k, v in sums.items()}) if total else None

    def summary(self) -> None:
        log(
            INFO,
            "\t%s of %s, max_weight %s, max_norm_ratio %s",
            type(self).__name__,
            self.method,
            self.max_weight,
            self.max_norm_ratio,
        )


def _sample(grid: Grid, fraction: float, min_nodes: int, min_available: int) -> list[int]:
    """Flower's FedAvg sampling: ``fraction`` of the connected nodes, at least ``min_nodes``."""
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    available = len(list(grid.get_node_ids()))
    size = max(int(available * fraction), min_nodes)
    nodes, _ = sample_nodes(grid, min_available, min(size, max(available, min_available)))
    return nodes


__all__ = ["LoRAStrategy", "lora_scale", "reply_update"]
