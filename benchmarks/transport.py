"""bfloat16 against float32 transport on the demo run: the metric, the loss and the bytes.

``[federation] transport_dtype`` makes the runtime really encode every client's start factors and
update in that dtype and decode them back, so bfloat16 rounds the values the server aggregates
and the clients start from. This runs the demo config (``configs/bbc_minilm.toml``: MiniLM on BBC
News, 10 clients, 3 rounds) once per dtype, everything else equal, and reads each run's
``metrics.jsonl``. The same two runs from the command line::

    .venv/bin/python -m raflora.cli run configs/bbc_minilm.toml --out /tmp/bbc_fp32 --overwrite
    .venv/bin/python -m raflora.cli run configs/bbc_minilm.toml --out /tmp/bbc_bf16 --overwrite --set federation.transport_dtype=bfloat16

    python -m benchmarks.transport              # the demo run, both dtypes (about 4 minutes)
    python -m benchmarks.transport --quick      # the tiny encoder, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.client_setup import demo_config
from benchmarks.common import machine_line, markdown_table

QUICK = {"run.rounds": 2, "eval.every": 1}


def run_one(dtype: str, out: Path, quick: bool, threads: int | None = None, overrides: dict | None = None) -> dict:
    """One run of the demo config with ``transport_dtype = dtype``; its metrics.jsonl lines."""
    from raflora.runtimes.embedded import run_federation

    values = {**(QUICK if quick else {}), **(overrides or {}), "federation.transport_dtype": dtype}
    if threads is not None:
        values["run.threads"] = threads
    config = demo_config(out, quick, values)
    start = time.perf_counter()
    run_federation(config, overwrite=True)
    seconds = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"dtype": dtype, "rounds": lines, "seconds": seconds}


def run(
    quick: bool = False,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    threads: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """The demo run once per transport dtype (``overrides``: more config values, e.g. for tests)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            runs.append(run_one(dtype, Path(tmp) / dtype, quick, threads, overrides))
    ref = runs[0]["rounds"][-1]
    for r in runs:
        last = r["rounds"][-1]
        r["final"] = {k: last.get(k) for k in ("round", "accuracy", "loss", "train_loss", "rho_rmin")}
        r["bytes_up"] = [m["bytes_up"] for m in r["rounds"]]
        r["bytes_down"] = [m["bytes_down"] for m in r["rounds"]]
        r["accuracy_change"] = last["accuracy"] - ref["accuracy"]
        r["bytes_vs_first"] = sum(r["bytes_up"]) / sum(runs[0]["bytes_up"])
    return {"runs": runs, "config": {"quick": quick, "rounds": len(runs[0]["rounds"])}}


def table(out: dict) -> str:
    headers = [
        "transport",
        "final accuracy",
        "change",
        "final loss",
        "train loss (last round)",
        "rho_rmin",
        "bytes_up per round",
        "bytes_down per round",
        "bytes vs first",
        "run s",
    ]
    rows = []
    for r in out["runs"]:
        f = r["final"]
        rows.append(
            [
                r["dtype"],
                f"{f['accuracy']:.4f}",
                f"{r['accuracy_change']:+.4f}",
                f"{f['loss']:.4f}",
                f"{f['train_loss']:.4f}",
                f"{f['rho_rmin']:.4f}",
                " / ".join(f"{b:,}" for b in r["bytes_up"]),
                " / ".join(f"{b:,}" for b in r["bytes_down"]),
                f"{r['bytes_vs_first']:.3f}x",
                f"{r['seconds']:.0f}",
            ]
        )
    per_round = markdown_table(
        ["transport", "round", "accuracy", "loss", "train loss", "rho_rmin"],
        [
            [
                r["dtype"],
                m["round"],
                "-" if m.get("accuracy") is None else f"{m['accuracy']:.4f}",
                "-" if m.get("loss") is None else f"{m['loss']:.4f}",
                f"{m['train_loss']:.4f}",
                f"{m['rho_rmin']:.4f}",
            ]
            for r in out["runs"]
            for m in r["rounds"]
        ],
    )
    return markdown_table(headers, rows) + "\n\n" + per_round


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny encoder, 2 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's, 2)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}\n")
    out = run(quick=args.quick, threads=args.threads)
    print(table(out))
    return out


if __name__ == "__main__":
    main()
