"""Run one experiment's raflora command and keep what docs/results.md is built from.

    python scripts/run_experiment.py EXPERIMENT [--part NAME] -- compare CONFIG --methods ... --out runs/exp/EXPERIMENT ...

runs ``python -m raflora.cli`` with the arguments after ``--`` (they must include ``--out``), then
copies every run's ``config.toml`` and ``metrics.jsonl`` (and a sweep's ``sweep.json``, a tuned comparison's ``tuned.json``) from the
output folder into ``results/EXPERIMENT/`` (``results/EXPERIMENT/NAME/`` with ``--part``: an
experiment made of several commands, e.g. a comparison and its reference run) with the same
relative paths, replacing what an earlier run of the same part left there, and records in
``results/EXPERIMENT/run.json`` the command, the git commit it ran on (and whether the tree had
uncommitted changes), the start time and the wall time (one entry per part; ``about.toml`` and the
other parts are left alone). Checkpoints and adapters stay in runs/:
the repository keeps the numbers, not the weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEPT = ("config.toml", "metrics.jsonl", "sweep.json", "tuned.json")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def out_folder(cli_args: list[str]) -> Path:
    for i, arg in enumerate(cli_args):
        if arg == "--out" and i + 1 < len(cli_args):
            return Path(cli_args[i + 1])
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
    raise SystemExit("error: give the raflora command an --out folder (its runs are copied from there)")


def keep_numbers(out: Path, dest: Path) -> int:
    """Copy the files of KEPT below ``out`` into ``dest``; returns how many were copied."""
    copied = 0
    for path in sorted(out.rglob("*")):
        if path.name in KEPT and path.is_file() and "report" not in path.relative_to(out).parts:
            target = dest / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied += 1
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("error: usage: run_experiment.py EXPERIMENT -- RAFLORA-ARGS ...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--part", default="", help="a sub-folder for one of the experiment's commands")
    args = parser.parse_args(argv[:split])
    cli_args = argv[split + 1 :]
    out = out_folder(cli_args)
    folder = ROOT / "results" / args.experiment
    dest = folder / args.part if args.part else folder
    record = {
        "part": args.part,
        "command": "raflora " + " ".join(cli_args),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    start = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "raflora.cli", *cli_args], cwd=ROOT)
    record["wall_seconds"] = round(time.monotonic() - start, 1)
    record["exit_code"] = code
    previous = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    parts = [p for p in previous.get("parts", []) if p["part"] != args.part]
    if args.part and (dest).exists():
        shutil.rmtree(dest)
    elif not args.part:
        parts = []
        for path in folder.glob("*"):
            if path.name != "about.toml":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    record["files"] = keep_numbers(ROOT / out, dest)
    folder.mkdir(parents=True, exist_ok=True)
    run = {"experiment": args.experiment, "parts": parts + [record]}
    (folder / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(
        f"run_experiment: {args.experiment}: exit {code}, {record['wall_seconds']} s, "
        f"{record['files']} files -> {dest.relative_to(ROOT)}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
