"""Fingerprints of runs, to show that a change leaves every number as it was.

    python scripts/same_numbers.py run OUT [--config configs/synthetic.toml] [--methods a,b] [--rounds K]
    python scripts/same_numbers.py diff OUT_BEFORE OUT_AFTER

``run`` runs the config once per method (``raflora run --method M``) into OUT/<method>/ and writes
OUT/fingerprint.json: per method, a sha256 of every metrics.jsonl line without its ``seconds``, of
every tensor of the last checkpoint and of the adapter, and of the adapter's config. ``diff``
prints, per method, which of them differ (exit 1 when any does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

METHODS = (
    "fedit",
    "zero_pad",
    "hetlora",
    "replication",
    "ffa",
    "fedsa",
    "flora",
    "flexlora",
    "florist",
    "raflora",
    "carryover",
    "rb_lora",
    "lora_fair",
    "raflora_keep",
)
# a label that is a method with options: the method and the --set it runs with
VARIANTS = {"raflora_keep": ("raflora", 'federation.method.empty_partition="keep"')}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _tensors(path: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    return {
        k: _sha(t.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
        for k, t in sorted(load_file(str(path)).items())
    }


def fingerprint(folder: Path) -> dict:
    lines = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("seconds", None)
        lines.append(_sha(json.dumps(record, sort_keys=True).encode()))
    checkpoint = sorted((folder / "checkpoints").glob("round_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    out = {"metrics": lines, "checkpoint": _tensors(checkpoint / "state.safetensors")}
    adapter = folder / "adapter"
    if adapter.is_dir():  # a method without a global model (fedsa) writes none
        out["adapter"] = _tensors(adapter / "adapter_model.safetensors")
        config = json.loads((adapter / "adapter_config.json").read_text())
        # PEFT writes target_modules from a set: its order changes from one process to the next
        out["adapter_config"] = {
            k: sorted(v) if isinstance(v := config.get(k), list) else v
            for k in ("r", "lora_alpha", "target_modules", "modules_to_save")
        }
    return out


def cmd_run(args) -> int:
    out = Path(args.out)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    prints = {}
    for label in methods:
        method, *sets = VARIANTS.get(label, (label,))
        cmd = [
            sys.executable,
            "-m",
            "raflora.cli",
            "run",
            args.config,
            "--method",
            method,
            "--out",
            str(out / label),
            "--overwrite",
            "--quiet",
        ]
        if args.rounds:
            cmd += ["--rounds", str(args.rounds)]
        if method == "fedit":  # fedit needs one rank for every client
            cmd += ["--set", 'ranks.policy="homogeneous"']
        for assignment in sets:
            cmd += ["--set", assignment]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        prints[label] = fingerprint(out / label)
    (out / "fingerprint.json").write_text(json.dumps(prints, indent=1))
    return 0


def cmd_diff(args) -> int:
    a = json.loads((Path(args.before) / "fingerprint.json").read_text())
    b = json.loads((Path(args.after) / "fingerprint.json").read_text())
    bad = 0
    for method in a:
        if method not in b:
            print(f"{method:12s} missing after")
            continue
        parts = [p for p in a[method] if a[method][p] != b[method].get(p)]
        print(f"{method:12s} {'identical' if not parts else 'DIFFERS in ' + ', '.join(parts)}")
        bad += bool(parts)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("out")
    run.add_argument("--config", default="configs/synthetic.toml")
    run.add_argument("--methods")
    run.add_argument("--rounds", type=int)
    run.set_defaults(func=cmd_run)
    diff = sub.add_parser("diff")
    diff.add_argument("before")
    diff.add_argument("after")
    diff.set_defaults(func=cmd_diff)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
