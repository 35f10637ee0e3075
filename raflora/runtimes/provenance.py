"""Where a run's numbers came from: code, library versions and machine, kept in ``run.json``.

The last digits of a run depend on the torch build, the thread count and the processor, so a
folder of results is only half a record without them. Each start of a run (the first, and every
``--resume``) appends one entry to ``run.json``'s ``sessions``; ``metrics.jsonl`` stays as it was,
line for line.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from raflora.federation.run_files import RUN_JSON, replace_file

LIBRARIES = ("torch", "transformers", "peft", "flwr", "safetensors", "numpy")
FILE = RUN_JSON


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def code_version() -> dict:
    """raflora's version (``version``) and, when it runs from a git checkout, the commit and whether files
    differ from it (``dirty``); an installed wheel has no commit."""
    import raflora

    out: dict = {"version": raflora.__version__, "commit": None, "dirty": None}
    root = Path(raflora.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return out
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return out
    if commit.returncode == 0:
        out["commit"] = commit.stdout.strip()
        out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return out


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` is
    only the architecture)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """The machine the run's model ran on: the CPU, the thread count, and the GPU when it ran on one."""
    out = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
        }
    elif device.type == "mps":
        out["gpu"] = {"name": "Apple MPS"}
    return out


def provenance(device: torch.device, after_round: int) -> dict:
    """One session's record: when, from which round, which code, which libraries, which machine."""
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "after_round": after_round,
        "code": code_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
        "machine": machine(device),
    }


def record_session(folder: Path, device: torch.device, after_round: int) -> dict:
    """Append this session to ``folder/run.json`` (a fresh run starts the file anew)."""
    path = folder / FILE
    sessions = []
    if after_round > 0 and path.is_file():
        try:
            sessions = json.loads(path.read_text()).get("sessions", [])
        except (ValueError, AttributeError):
            sessions = []  # an unreadable record is replaced, never a reason to stop a run
    sessions.append(provenance(device, after_round))
    replace_file(path, (json.dumps({"sessions": sessions}, indent=1) + "\n").encode())  # whole, or the old one
    return sessions[-1]
