"""Client training overhead: the runtime's per-client path against a bare PEFT training loop,
for the text (MiniLM), vision (EfficientNet-Lite0) and reasoning (SmolLM2) tasks.

The runtime path is :func:`raflora.federation.round.run_client`, exactly what a round does for each
sampled client: the start factors go down the wire (encoded in ``transport_dtype``), the rank's
adapter is activated and loaded with them and the global head, ``train_local`` takes the steps
(tokenising its batches), the factors and head are extracted and the factors go up the wire.

The bare loop (:mod:`benchmarks.bare_loops`) is what a user would write with PEFT alone:
``get_peft_model`` of the same task model with a ``LoraConfig`` of the client's rank (one model per
rank, built once), the batches built beforehand, ``AdamW`` created per client, forward, the task's
loss, backward, gradient clipping, step. Same examples, same batches (same seeded order), same
steps, same optimiser and learning rates (the run's schedule), same torch seed for dropout; before
timing, one client is trained both ways from the same start and the losses, factors and head are
compared (:func:`benchmarks.bare_loops.same_work` raises if they differ), so both really do the
same work.

Timing: for every repetition, every client of the round is trained by both paths back to back
(A B, then B A for the next client, and so on), and each path's round total is the sum over the
clients. The ratio is the median runtime round over the median bare round (and, paired, the
median of the per-repetition ratios). A breakdown times the runtime's own pieces alone.

    python -m benchmarks.client_overhead                    # all-MiniLM-L6-v2, the demo's 10 clients
    python -m benchmarks.client_overhead --quick            # the tiny encoder
    python -m benchmarks.client_overhead --task vision      # EfficientNet-Lite0, 5 clients x 8 steps
    python -m benchmarks.client_overhead --task reasoning   # SmolLM2-135M, 3 clients x 3 steps
    python -m benchmarks.client_overhead --task vision --quick   # (and reasoning) their tiny models
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from benchmarks.bare_loops import (
    BARE_LOOPS,
    bare_factors,
    bare_head,
    bare_peft_model,
    bare_train,
    batch_indices,
    load_bare,
    max_rel_diff,
    same_work,
)
from benchmarks.client_setup import TASK_CONFIGS, task_config
from benchmarks.common import machine_line, markdown_table, median, spread
from raflora.client.train import num_local_steps
from raflora.federation.round import fill_missing, run_client
from raflora.federation.setup import build_setup
from raflora.federation.state import FederationState
from raflora.federation.transport import transmit
from raflora.tasks import build_task


def _clock(fn: Callable[[], object]) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def _components(setup, state, client: int, repeats: int) -> dict[str, float]:
    """Median seconds of the runtime's own per-client pieces, each timed alone."""
    model, rank, fed = setup.model, setup.ranks[client], setup.config.federation
    examples = setup.client_examples(client)
    start = state.starts[rank]
    steps = setup.config.train.local_steps
    idx = batch_indices(len(examples), setup.config.train.batch_size, steps, 0)

    def swap_in():
        model.activate(rank)
        model.set_factors(rank, start)
        model.set_head(rank, state.head)

    def extract():
        model.get_factors(rank)
        model.get_head(rank)

    def wire():
        down, _ = transmit(start, fed.transport_dtype, setup.method.uploads, fill_missing(setup))
        transmit(model.get_factors(rank), fed.transport_dtype, setup.method.uploads, fill_missing(setup))

    def collate():
        for b in idx:
            setup.task.collate([examples[i] for i in b])

    out = {}
    for name, fn in (("swap_in", swap_in), ("extract", extract), ("wire", wire), ("collate", collate)):
        fn()
        out[name] = median([_clock(fn)[0] for _ in range(repeats)])
    # What the run pays once, before round 1: Task.prepare on a fresh task (the text task tokenises
    # every training and test article there).
    fresh = build_task(setup.config.task.name, **setup.config.task.options)
    if hasattr(fresh, "tokenizer"):
        _ = fresh.tokenizer  # loading the tokenizer is not part of it
    out["prepare_once"] = _clock(lambda: fresh.prepare(list(setup.data.train) + list(setup.test)))[0]
    out["prepare_examples"] = len(setup.data.train) + len(setup.test)
    return out


def one_per_rank(setup, clients: Sequence[int], limit: int | None = None) -> list[int]:
    """The first of ``clients`` of each rank (at most ``limit`` of them), in client order."""
    seen: dict[int, int] = {}
    for c in clients:
        seen.setdefault(setup.ranks[c], c)
    return sorted(seen.values())[:limit]


# Timed repetitions by default: a reasoning client takes ~5 s (3 steps of ~1.7 s), so fewer.
REPEATS = {"text": 3, "vision": 3, "reasoning": 3}  # medians of 3 keep `make bench` under 30 minutes

# Which of round 1's sampled clients each task's benchmark trains (None: all of them).
CLIENTS = {"reasoning": lambda setup, sampled: one_per_rank(setup, sampled, 3)}


def agreement_check(setup, state, round_: int, client: int, bare, batches, loop) -> dict:
    """Train ``client`` both ways from the same start: its mean loss, trained factors and head."""
    train, rank = setup.config.train, setup.ranks[client]
    load_bare(bare, state.starts[rank], state.head)
    bare_losses = bare_train(
        bare,
        batches,
        client_lrs(setup, round_, len(batches)),
        train.weight_decay,
        train.grad_clip,
        setup.client_seed(round_, client),
        loop,
    )
    turn = run_client(setup, state, round_, client, {})
    mine = bare_factors(bare)
    head = bare_head(bare)
    return {
        "client": client,
        "rank": rank,
        "runtime_loss": turn.loss,
        "bare_loss": sum(bare_losses) / len(bare_losses),
        "factor_max_rel_err": max_rel_diff(
            [(turn.update.factors[m].A, A) for m, (A, _) in mine.items()]
            + [(turn.update.factors[m].B, B) for m, (_, B) in mine.items()]
        ),
        "head_max_rel_err": max_rel_diff([(turn.head[k], v) for k, v in head.items()]),
        "factors": len(mine),
        "head_tensors": len(head),
    }


def client_lrs(setup, round_: int, steps: int) -> list[float]:
    """The learning rate of each of a client's steps (the run's schedule, as ``train_local`` sets it)."""
    return [setup.lr_at(round_, step / steps) for step in range(steps)]


def run(
    quick: bool = False,
    repeats: int = 5,
    threads: int = 2,
    clients: Sequence[int] | None = None,
    overrides: dict | None = None,
    task: str = "text",
) -> dict:
    """Time one round's client training both ways, ``repeats`` times after one warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        config = task_config(task, tmp, quick, {"run.threads": threads, **(overrides or {})})
    if config.train.precision != "float32":
        raise ValueError("the bare loop trains in float32; use [train] precision = 'float32'")
    setup = build_setup(config)  # sets torch's threads to run.threads
    state = FederationState(starts=setup.fresh_starts(), head=setup.model.get_head(None))
    train, loop = config.train, BARE_LOOPS[config.task.name]
    round_ = 1
    if clients is None:
        sampled = setup.sample_clients(round_)
        clients = CLIENTS[task](setup, sampled) if task in CLIENTS else sampled
    clients = list(clients)
    ranks = sorted({setup.ranks[c] for c in clients})
    torch.manual_seed(0)
    bare = {
        r: bare_peft_model(setup.task, r, config.lora.alpha, config.lora.dropout, config.lora.scaling) for r in ranks
    }
    batches = {}
    for c in clients:
        examples = setup.client_examples(c)
        steps = num_local_steps(train, len(examples))
        idx = batch_indices(len(examples), train.batch_size, steps, setup.client_seed(round_, c))
        batches[c] = [setup.task.collate([examples[i] for i in b]) for b in idx]
    lrs = {c: client_lrs(setup, round_, len(batches[c])) for c in clients}

    def runtime_client(c):
        return run_client(setup, state, round_, c, {})

    def bare_client(c):
        return bare_train(
            bare[setup.ranks[c]],
            batches[c],
            lrs[c],
            train.weight_decay,
            train.grad_clip,
            setup.client_seed(round_, c),
            loop,
        )

    # Same work: one client trained both ways from the same start gives the same losses and factors.
    check = clients[0]
    agreement = agreement_check(setup, state, round_, check, bare[setup.ranks[check]], batches[check], loop)
    same_work(agreement)

    times = {"runtime": [], "bare": []}
    cpu = {"runtime": [], "bare": []}
    per_client = {c: {"runtime": [], "bare": []} for c in clients}
    for rep in range(repeats + 1):  # repetition 0 is the warm-up
        total = {"runtime": 0.0, "bare": 0.0}
        total_cpu = {"runtime": 0.0, "bare": 0.0}
        for i, c in enumerate(clients):
            pair = [("runtime", runtime_client), ("bare", bare_client)]
            if (rep + i) % 2:
                pair.reverse()
            for name, fn in pair:
                wall, proc = _clock(lambda: fn(c))
                total[name] += wall
                total_cpu[name] += proc
                if rep:
                    per_client[c][name].append(wall)
        if rep:
            for name in total:
                times[name].append(total[name])
                cpu[name].append(total_cpu[name])

    rows = []
    for r in ranks:
        mine = [c for c in clients if setup.ranks[c] == r]
        rt = sum(median(per_client[c]["runtime"]) for c in mine)
        bt = sum(median(per_client[c]["bare"]) for c in mine)
        rows.append(
            {"rank": r, "clients": len(mine), "runtime_s": rt / len(mine), "bare_s": bt / len(mine), "ratio": rt / bt}
        )
    paired = [a / b for a, b in zip(times["runtime"], times["bare"])]
    summary = {
        "runtime_s": median(times["runtime"]),
        "bare_s": median(times["bare"]),
        "runtime_range": spread(times["runtime"]),
        "bare_range": spread(times["bare"]),
        "ratio": median(times["runtime"]) / median(times["bare"]),
        "paired_ratio": median(paired),
        "paired_range": spread(paired),
        "cpu_ratio": median(cpu["runtime"]) / median(cpu["bare"]),
        "repeats": repeats,
    }
    return {
        "round": summary,
        "rows": rows,
        "agreement": agreement,
        "components": _components(setup, state, clients[0], max(3, repeats)),
        "config": {
            "task": task,
            "model": config.task.options.get("model"),
            "clients": len(clients),
            "steps": train.local_steps,
            "batch_size": train.batch_size,
            "max_length": config.task.options.get("max_length"),
            "threads": threads,
            "repeats": repeats,
            "transport": config.federation.transport_dtype,
        },
    }


def table(out: dict) -> str:
    s, cfg = out["round"], out["config"]
    ms = 1000.0
    round_table = markdown_table(
        ["path", "round training s (median)", "range s", "per client ms", "runtime / bare"],
        [
            ["bare PEFT loop", f"{s['bare_s']:.3f}", s["bare_range"], f"{s['bare_s'] / cfg['clients'] * ms:.0f}", "-"],
            [
                "raflora run_client",
                f"{s['runtime_s']:.3f}",
                s["runtime_range"],
                f"{s['runtime_s'] / cfg['clients'] * ms:.0f}",
                f"{s['ratio']:.3f} (paired {s['paired_ratio']:.3f}, range {s['paired_range']}; CPU {s['cpu_ratio']:.3f})",
            ],
        ],
    )
    rank_table = markdown_table(
        ["rank", "clients", "bare ms per client", "runtime ms per client", "runtime / bare"],
        [
            [r["rank"], r["clients"], f"{r['bare_s'] * ms:.0f}", f"{r['runtime_s'] * ms:.0f}", f"{r['ratio']:.3f}"]
            for r in out["rows"]
        ],
    )
    a = out["agreement"]
    c = out["components"]
    parts = markdown_table(
        ["runtime piece (one client, timed alone)", "ms"],
        [
            ["activate adapter + load start factors + head", f"{c['swap_in'] * ms:.2f}"],
            ["extract factors + head", f"{c['extract'] * ms:.2f}"],
            [f"wire down + up ({cfg['transport']})", f"{c['wire'] * ms:.2f}"],
            [f"collate {cfg['steps']} batches (in the steps)", f"{c['collate'] * ms:.2f}"],
            [
                f"once per run, before round 1: Task.prepare of {c['prepare_examples']} examples",
                f"{c['prepare_once'] * ms:.0f}",
            ],
        ],
    )
    tokens = f", max_length {cfg['max_length']}" if cfg["max_length"] is not None else ""
    head = f", head max relative difference {a['head_max_rel_err']:.1e}" if a["head_tensors"] else ""
    return (
        f"task {cfg['task']}, model {cfg['model']}, {cfg['clients']} clients x {cfg['steps']} steps, "
        f"batch {cfg['batch_size']}{tokens}, {cfg['threads']} threads, {cfg['repeats']} repetitions\n\n"
        f"{round_table}\n\n{rank_table}\n\n{parts}\n\n"
        f"same work: client {a['client']} (rank {a['rank']}) mean loss runtime {a['runtime_loss']:.6f}, "
        f"bare {a['bare_loss']:.6f}; trained A and B max relative difference {a['factor_max_rel_err']:.1e}{head}"
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task",
        choices=sorted(TASK_CONFIGS),
        default="text",
        help="text: MiniLM on BBC News (the demo); vision: EfficientNet-Lite0 on Fashion-MNIST; "
        "reasoning: SmolLM2-135M on chain_sum",
    )
    parser.add_argument("--quick", action="store_true", help="the task's tiny random model")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: 3)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}\n")
    repeats = args.repeats if args.repeats is not None else REPEATS.get(args.task, 5)
    out = run(quick=args.quick, repeats=repeats, threads=args.threads, task=args.task)
    print(table(out))
    return out


if __name__ == "__main__":
    main()
