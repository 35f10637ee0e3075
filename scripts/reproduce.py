"""Rerun kept experiment runs and compare their rounds with the kept ``metrics.jsonl``.

    python scripts/reproduce.py results/exp6-synthetic/carryover/seed-0 [RUN ...]
    python scripts/reproduce.py --task synthetic [--seed 0]    # every kept synthetic run of that seed
    python scripts/reproduce.py --rounds 5 RUN ...             # only the first 5 rounds, rerun and compared

Each run folder under ``results/`` holds the ``config.toml`` its run wrote (every key resolved, so
a later change of a default does not change it) and its ``metrics.jsonl``. This runs the config
again, into a temporary folder, on the code of the working tree, and compares every round's record
field by field: every field the kept record has except the wall time (``seconds``); fields the
records gained after the run was kept are not compared. It prints one line per run,
``identical`` or the first field that differs, and exits 1 if any run differs: the kept numbers
are then no longer what the code computes, and the experiment should be rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIMING = frozenset({"seconds"})


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _differ(a, b, tolerance: float) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        if math.isnan(a) or math.isnan(b):  # a NaN share (an all-zero update) is kept as NaN
            return not (math.isnan(a) and math.isnan(b))
        return not math.isclose(a, b, rel_tol=0.0, abs_tol=tolerance) if tolerance else a != b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differ(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) != len(b) or any(_differ(x, y, tolerance) for x, y in zip(a, b))
    return a != b


def _shown(value) -> str:
    return json.dumps(value)[:60]


def first_difference(kept: list[dict], again: list[dict], tolerance: float = 0.0) -> str | None:
    """The first round and field where ``again`` differs from ``kept`` (floats within ``tolerance``
    count as equal; 0: exactly), or None."""
    if len(kept) != len(again):
        return f"{len(kept)} rounds kept, {len(again)} rerun"
    for old, new in zip(kept, again):
        for key in sorted(old.keys() - TIMING):  # a field added to the records later is not compared
            if key not in new or _differ(old[key], new[key], tolerance):
                return f"round {old.get('round')}: {key} kept {_shown(old.get(key))}, rerun {_shown(new.get(key))}"
    return None


def rerun(folder: Path, out: Path, rounds: int | None = None) -> list[dict]:
    """Run ``folder``'s config.toml again (its first ``rounds`` rounds: all by default), writing
    into ``out``; returns the rounds' records."""
    from raflora.config_io import load_config
    from raflora.runtimes import run

    # legacy: a run folder's config, read as --resume reads it (keys added since take their old behaviour)
    config = load_config(folder / "config.toml", {"run.out": str(out), "run.rounds": rounds}, legacy=True)
    return run(config, overwrite=True)


def reproduce(folder: Path, rounds: int | None = None, tolerance: float = 0.0) -> str | None:
    """None when a rerun of ``folder``'s run (its first ``rounds`` rounds) gives its kept records,
    floats within ``tolerance``; otherwise the first difference."""
    kept = records(folder / "metrics.jsonl")
    if rounds is not None:
        kept = [r for r in kept if r["round"] <= rounds]
    with tempfile.TemporaryDirectory(prefix="raflora-reproduce-") as tmp:
        again = rerun(folder, Path(tmp) / "run", rounds)
    return first_difference(kept, again, tolerance)


def kept_runs(results: Path, task: str, seed: int) -> list[Path]:
    """The run folders under ``results`` whose config has ``task.name == task`` and ``run.seed == seed``."""
    found = []
    for config in sorted(results.rglob("config.toml")):
        data = tomllib.loads(config.read_text(encoding="utf-8"))
        if data.get("task", {}).get("name") == task and data.get("run", {}).get("seed") == seed:
            found.append(config.parent)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders holding config.toml and metrics.jsonl")
    parser.add_argument("--task", help="every kept run of this task (e.g. synthetic) under --results")
    parser.add_argument("--seed", type=int, default=0, help="with --task: the runs of this seed (default 0)")
    parser.add_argument("--rounds", type=int, help="rerun and compare only the first ROUNDS rounds")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    folders = list(args.runs) + (kept_runs(args.results, args.task, args.seed) if args.task else [])
    if not folders:
        parser.error("give run folders or --task")
    differing = 0
    for folder in folders:
        difference = reproduce(folder, args.rounds)
        differing += difference is not None
        print(f"{folder}: {difference or 'identical'}", flush=True)
    print(f"{len(folders) - differing} of {len(folders)} runs identical")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
