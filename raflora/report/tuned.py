"""A comparison's per-method choices (``tuned.json``, written by ``raflora compare --tuned``;
:mod:`raflora.tuning` makes them): which config keys each method set for itself."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TUNED_FILE = "tuned.json"


def tuned_keys(choices: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The config keys the choices set per method (what a report pairs across)."""
    return sorted({key for choice in choices.values() for key in choice["settings"]})


def load_tuned(run_folders: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """The ``tuned.json`` of a comparison folder given alone (``raflora report OUT``), else ``{}``."""
    if len(run_folders) != 1:
        return {}
    path = Path(run_folders[0]) / TUNED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
