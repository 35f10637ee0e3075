"""Client training overhead: the runtime's per-client path against a bare PEFT training loop.

The runtime path is :func:`raflora.federation.round.run_client`, exactly what a round does for each
sampled client: the start factors go down the wire (encoded in ``transport_dtype``), the rank's
adapter is activated and loaded with them and the global head, ``train_local`` takes the steps
(tokenising its batches), the factors and head are extracted and the factors go up the wire.

The bare loop is what a user would write with PEFT alone: ``get_peft_model`` of the same task
model with a ``LoraConfig`` of the client's rank (one model per rank, built once), the batches
tokenised beforehand, ``AdamW`` created per client, forward, cross-entropy, backward, gradient
clipping, step. Same examples, same batches (same seeded order), same steps, same optimiser and
learning rate, same torch seed for the encoder's dropout; before timing, one client is trained
both ways from the same start and the losses and factors are compared, so both really do the same
work.

Timing: for every repetition, every client of the round is trained by both paths back to back
(A B, then B A for the next client, and so on), and each path's round total is the sum over the
clients. The ratio is the median runtime round over the median bare round (and, paired, the
median of the per-repetition ratios). A breakdown times the runtime's own pieces alone.

    python -m benchmarks.client_overhead              # all-MiniLM-L6-v2, the demo's 10 clients
    python -m benchmarks.client_overhead --quick      # the tiny encoder
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from benchmarks.client_setup import demo_config
from benchmarks.common import machine_line, markdown_table, median, spread
from raflora.tasks.common import logits_of
from raflora.federation.round import fill_missing, run_client
from raflora.federation.setup import build_setup
from raflora.federation.state import FederationState
from raflora.federation.transport import transmit
from raflora.tasks import build_task

PREFIX = "base_model.model."


def bare_peft_model(task, rank: int, alpha: float, dropout: float):
    """The task model wrapped by PEFT for one rank, as a user would (adapter ``default``)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=task.target_modules,
                        modules_to_save=task.head_modules or None, bias="none")
    return get_peft_model(task.load_model(), config)


def batch_indices(num_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of example indices: a fresh seeded permutation for every pass over the
    data (the order the runtime draws for a client with this seed)."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        if len(order) < min(batch_size, num_examples):
            order += torch.randperm(num_examples, generator=g).tolist()
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def bare_train(model, batches: Sequence[dict], lr: float, weight_decay: float, grad_clip: float, seed: int) -> list[float]:
    """A plain PEFT + torch training loop over pre-tokenised batches; returns the step losses."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        loss = F.cross_entropy(logits, batch["labels"])
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


def _lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {n[len(PREFIX):]: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _heads(model) -> dict:
    from peft.utils.other import ModulesToSaveWrapper

    return {n[len(PREFIX):]: m for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)}


def load_bare(model, factors, head) -> None:
    """Put start factors and a head into a bare model (only for the agreement check)."""
    with torch.no_grad():
        for name, layer in _lora_layers(model).items():
            layer.lora_A["default"].weight.copy_(factors[name].A)
            layer.lora_B["default"].weight.copy_(factors[name].B)
        for name, wrapper in _heads(model).items():
            for key, p in wrapper.modules_to_save["default"].named_parameters():
                p.copy_(head[f"{name}.{key}"])


def bare_factors(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (l.lora_A["default"].weight.detach().clone(), l.lora_B["default"].weight.detach().clone())
            for n, l in _lora_layers(model).items()}


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
        fresh.tokenizer  # loading the tokenizer is not part of it
    out["prepare_once"] = _clock(lambda: fresh.prepare(list(setup.data.train) + list(setup.test)))[0]
    out["prepare_examples"] = len(setup.data.train) + len(setup.test)
    return out


def run(quick: bool = False, repeats: int = 5, threads: int = 2, clients: Sequence[int] | None = None,
        overrides: dict | None = None) -> dict:
    """Time one round's client training both ways, ``repeats`` times after one warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(tmp, quick, {"run.threads": threads, **(overrides or {})})
    if config.lora.scaling != "lora":
        raise ValueError("the bare loop uses PEFT's own alpha / r scaling; use [lora] scaling = 'lora'")
    setup = build_setup(config)  # sets torch's threads to run.threads
    state = FederationState(starts=setup.fresh_starts(), head=setup.model.get_head(None))
    task, train = setup.task, config.train
    round_ = 1
    clients = list(clients) if clients is not None else setup.sample_clients(round_)
    ranks = sorted({setup.ranks[c] for c in clients})
    torch.manual_seed(0)
    bare = {r: bare_peft_model(task, r, config.lora.alpha, config.lora.dropout) for r in ranks}
    batches = {}
    for c in clients:
        examples = setup.client_examples(c)
        idx = batch_indices(len(examples), train.batch_size, train.local_steps, setup.client_seed(round_, c))
        batches[c] = [task.collate([examples[i] for i in b]) for b in idx]

    def runtime_client(c):
        return run_client(setup, state, round_, c, {})

    def bare_client(c):
        return bare_train(bare[setup.ranks[c]], batches[c], train.lr, train.weight_decay, train.grad_clip,
                          setup.client_seed(round_, c))

    # Same work: one client trained both ways from the same start gives the same losses and factors.
    check = clients[0]
    rank = setup.ranks[check]
    load_bare(bare[rank], state.starts[rank], state.head)
    bare_losses = bare_client(check)
    turn = runtime_client(check)
    mine = bare_factors(bare[rank])
    agreement = {
        "client": check, "rank": rank, "runtime_loss": turn.loss, "bare_loss": sum(bare_losses) / len(bare_losses),
        "factor_max_rel_err": max(
            float((turn.update.factors[m].B - B).norm() / B.norm().clamp_min(1e-30)) for m, (_, B) in mine.items()
        ),
    }

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
        rows.append({"rank": r, "clients": len(mine), "runtime_s": rt / len(mine), "bare_s": bt / len(mine),
                     "ratio": rt / bt})
    paired = [a / b for a, b in zip(times["runtime"], times["bare"])]
    summary = {
        "runtime_s": median(times["runtime"]), "bare_s": median(times["bare"]),
        "runtime_range": spread(times["runtime"]), "bare_range": spread(times["bare"]),
        "ratio": median(times["runtime"]) / median(times["bare"]),
        "paired_ratio": median(paired), "paired_range": spread(paired),
        "cpu_ratio": median(cpu["runtime"]) / median(cpu["bare"]),
        "repeats": repeats,
    }
    return {
        "round": summary, "rows": rows, "agreement": agreement,
        "components": _components(setup, state, clients[0], max(3, repeats)),
        "config": {"model": config.task.options.get("model"), "clients": len(clients), "steps": train.local_steps,
                   "batch_size": train.batch_size, "max_length": config.task.options.get("max_length"),
                   "threads": threads, "repeats": repeats, "transport": config.federation.transport_dtype},
    }


def table(out: dict) -> str:
    s, cfg = out["round"], out["config"]
    ms = 1000.0
    round_table = markdown_table(
        ["path", "round training s (median)", "range s", "per client ms", "runtime / bare"],
        [["bare PEFT loop", f"{s['bare_s']:.3f}", s["bare_range"], f"{s['bare_s'] / cfg['clients'] * ms:.0f}", "-"],
         ["raflora run_client", f"{s['runtime_s']:.3f}", s["runtime_range"],
          f"{s['runtime_s'] / cfg['clients'] * ms:.0f}",
          f"{s['ratio']:.3f} (paired {s['paired_ratio']:.3f}, range {s['paired_range']}; CPU {s['cpu_ratio']:.3f})"]],
    )
    rank_table = markdown_table(
        ["rank", "clients", "bare ms per client", "runtime ms per client", "runtime / bare"],
        [[r["rank"], r["clients"], f"{r['bare_s'] * ms:.0f}", f"{r['runtime_s'] * ms:.0f}", f"{r['ratio']:.3f}"]
         for r in out["rows"]],
    )
    a = out["agreement"]
    c = out["components"]
    parts = markdown_table(
        ["runtime piece (one client, timed alone)", "ms"],
        [["activate adapter + load start factors + head", f"{c['swap_in'] * ms:.2f}"],
         ["extract factors + head", f"{c['extract'] * ms:.2f}"],
         [f"wire down + up ({cfg['transport']})", f"{c['wire'] * ms:.2f}"],
         [f"collate {cfg['steps']} batches (in the steps)", f"{c['collate'] * ms:.2f}"],
         [f"once per run, before round 1: Task.prepare of {c['prepare_examples']} examples",
          f"{c['prepare_once'] * ms:.0f}"]],
    )
    return (
        f"model {cfg['model']}, {cfg['clients']} clients x {cfg['steps']} steps, batch {cfg['batch_size']}, "
        f"max_length {cfg['max_length']}, {cfg['threads']} threads, {cfg['repeats']} repetitions\n\n"
        f"{round_table}\n\n{rank_table}\n\n{parts}\n\n"
        f"same work: client {a['client']} (rank {a['rank']}) mean loss runtime {a['runtime_loss']:.6f}, "
        f"bare {a['bare_loss']:.6f}; trained B max relative difference {a['factor_max_rel_err']:.1e}"
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny encoder instead of MiniLM")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}\n")
    out = run(quick=args.quick, repeats=args.repeats, threads=args.threads)
    print(table(out))
    return out


if __name__ == "__main__":
    main()
