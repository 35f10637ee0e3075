"""Memory per simulated client: peak RSS of a whole embedded run with 10 and with 100 clients.

The embedded runtime keeps one base model in memory and swaps adapters (one PEFT adapter per
distinct rank, loaded with each client's start factors before it trains), so simulating more
clients should only add what each client sends back (its factors and head, held until the round
is aggregated) and the aggregation's work on them, never a copy of the model.

Each run is :func:`raflora.federation.run_federation` of the demo config (one round, a few local
steps, every client sampled, the evaluation on a fixed test subsample) in a fresh interpreter,
which reports its peak resident set (``VmHWM`` from ``/proc/self/status``, the kernel's
high-water mark over the process's life: model loading, data, training, aggregation,
evaluation, checkpoint and adapter export), and its resident set when the server starts
aggregating (every update held, no aggregation work yet). The child runs with ``MALLOC_MMAP_THRESHOLD_=131072``
like the server memory benchmark, so freed large tensors leave the resident set at once.

    python -m benchmarks.client_memory              # all-MiniLM-L6-v2, 10 and 100 clients
    python -m benchmarks.client_memory --quick      # the tiny encoder
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from benchmarks.client_setup import ROOT, adapter_bytes, demo_config
from benchmarks.common import machine_line, markdown_table, status_kib

MIB = 1024 * 1024
# 100 clients need at least 100 x min_examples training articles: the toy run keeps 600.
QUICK_DATA = {"task.train_size": 600}


def run_overrides(clients: int, steps: int, threads: int, quick: bool) -> dict:
    values = {
        "federation.num_clients": clients,
        "federation.sample_fraction": 1.0,
        "train.local_steps": steps,
        "run.rounds": 1,
        "run.threads": threads,
        "run.keep_checkpoints": 1,
        "eval.max_examples": 64,
        "eval.every": 1,
    }
    if quick:
        values.update(QUICK_DATA)
    return values


def child(clients: int, steps: int, threads: int, quick: bool) -> dict:
    """One run in this (fresh) process; sizes in bytes."""
    from raflora.aggregation.method import Method
    from raflora.ranks import client_ranks
    from raflora.runtimes.embedded import run_federation

    # The resident set when the server starts aggregating: every client has trained and its update
    # is held, nothing of the aggregation exists yet.
    seen = {}
    aggregate = Method.aggregate  # every method inherits it

    def watched(*args, **kwargs):
        seen["rss_at_aggregate"] = status_kib("VmRSS") * 1024
        return aggregate(*args, **kwargs)

    Method.aggregate = watched
    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(tmp, quick, run_overrides(clients, steps, threads, quick))
        metrics = run_federation(config)
        peak = status_kib("VmHWM") * 1024
        rss_end = status_kib("VmRSS") * 1024
    Method.aggregate = aggregate
    return {
        "clients": clients,
        "peak_rss": peak,
        "rss_end": rss_end,
        "rss_at_aggregate": seen["rss_at_aggregate"],
        "accepted": metrics[-1]["accepted"],
        "ranks": client_ranks(config.ranks, clients, config.run.seed),
        "bytes_up": metrics[-1]["bytes_up"],
    }


def measure(clients: int, steps: int, threads: int, quick: bool) -> dict:
    """Run :func:`child` in a fresh interpreter and return its numbers."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.client_memory",
        "--child",
        str(clients),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ] + (["--quick"] if quick else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"client memory child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_facts(quick: bool) -> dict:
    """Bytes of the task model's parameters and buffers, and the adapted modules' shapes."""
    from raflora.tasks import build_task

    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(tmp, quick)
    task = build_task(config.task.name, **config.task.options)
    model = task.load_model()
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    targets = set(task.target_modules)
    shapes = {
        name: tuple(m.weight.shape)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets and hasattr(m, "weight")
    }
    head = sum(
        p.numel() * p.element_size() for name in task.head_modules for p in model.get_submodule(name).parameters()
    )
    return {"model_bytes": size, "shapes": shapes, "head_bytes": head, "model": config.task.options.get("model")}


def run(quick: bool = False, clients: Sequence[int] = (10, 100), steps: int = 2, threads: int = 2) -> dict:
    facts = model_facts(quick)
    rows = [measure(n, steps, threads, quick) for n in clients]
    for r in rows:
        r["adapter_bytes"] = sum(adapter_bytes(facts["shapes"], k) for k in r["ranks"])
        r["adapter_bytes_per_client"] = r["adapter_bytes"] / r["clients"]
    base = rows[0]
    for r in rows:
        more = r["clients"] - base["clients"]
        r["growth"] = r["peak_rss"] - base["peak_rss"]
        r["held_growth"] = r["rss_at_aggregate"] - base["rss_at_aggregate"]
        r["growth_per_client"] = r["growth"] / more if more else None
        extra_adapters = r["adapter_bytes"] - base["adapter_bytes"]
        r["growth_vs_adapters"] = r["growth"] / extra_adapters if more else None
        r["growth_in_models"] = r["growth"] / facts["model_bytes"]
    return {
        "rows": rows,
        "model_bytes": facts["model_bytes"],
        "head_bytes": facts["head_bytes"],
        "config": {"model": facts["model"], "steps": steps, "threads": threads, "modules": len(facts["shapes"])},
    }


def table(out: dict) -> str:
    cfg = out["config"]
    headers = [
        "clients",
        "peak RSS MiB",
        "growth over first row MiB",
        "RSS when aggregation starts MiB (growth)",
        "growth per extra client KiB",
        "adapter per client KiB (mean rank)",
        "growth / extra clients' adapters",
        "growth in model copies",
    ]
    rows = []
    for r in out["rows"]:
        mean_rank = sum(r["ranks"]) / len(r["ranks"])
        rows.append(
            [
                r["clients"],
                f"{r['peak_rss'] / MIB:.1f}",
                f"{r['growth'] / MIB:.1f}",
                f"{r['rss_at_aggregate'] / MIB:.1f} ({r['held_growth'] / MIB:+.1f})",
                "-" if r["growth_per_client"] is None else f"{r['growth_per_client'] / 1024:.0f}",
                f"{r['adapter_bytes_per_client'] / 1024:.0f} ({mean_rank:.2f})",
                "-" if r["growth_vs_adapters"] is None else f"{r['growth_vs_adapters']:.2f}x",
                f"{r['growth_in_models']:.3f}",
            ]
        )
    return (
        f"model {cfg['model']}: {out['model_bytes'] / MIB:.1f} MiB of parameters and buffers, "
        f"{cfg['modules']} adapted modules, head {out['head_bytes'] / 1024:.1f} KiB; 1 round, "
        f"{cfg['steps']} local steps, {cfg['threads']} threads\n\n" + markdown_table(headers, rows)
    )


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny encoder instead of MiniLM")
    parser.add_argument("--clients", default="10,100", help="comma-separated client counts")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.threads, args.quick)))
        return None
    print(f"machine: {machine_line()}\n")
    out = run(
        quick=args.quick, clients=[int(x) for x in args.clients.split(",")], steps=args.steps, threads=args.threads
    )
    print(table(out))
    return out


if __name__ == "__main__":
    main()
