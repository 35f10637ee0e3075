"""Data for federations whose nodes bring their own files: the example reviews split by user."""

from __future__ import annotations

import csv
from pathlib import Path

REVIEWS = Path(__file__).resolve().parents[3] / "configs" / "examples" / "reviews.csv"


def split_reviews(folder: Path) -> dict[str, Path]:
    """The example reviews as one file per user (each user's own data), plus the server's file."""
    rows = list(csv.DictReader(REVIEWS.open()))
    files = {}
    for user in ("ana", "ben", "chen"):
        files[user] = folder / f"{user}.csv"
        with files[user].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "label": r["label"]} for r in rows if r["user"] == user)
    files["server"] = folder / "server.csv"
    with files["server"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows[30:])
    return files


def config_data(out: Path, server_file: Path, **federation) -> dict:
    return {
        "run": {"name": "declared", "seed": 1, "rounds": 2, "out": str(out), "threads": 1},
        "federation": {"num_clients": 3, "method": "raflora", **federation},
        "ranks": {"policy": "cycle", "ranks": [2], "r_max": 8},
        "train": {"local_steps": 2, "lr": 0.01, "batch_size": 4},
        "task": {
            "name": "user_text",
            "train_file": str(server_file),
            "test_size": 0.3,
            "model": "tiny",
            "max_length": 16,
            "tiny_hidden_size": 16,
            "tiny_layers": 1,
        },
        "eval": {"batch_size": 32},
    }
