"""Models and datasets named by a Hugging Face Hub id (``org/name``), from the local cache only.

Nothing downloads during a run: a Hub id must already be in the cache (``HF_HUB_CACHE``, by
default ``~/.cache/huggingface/hub``), put there once with ``hf download org/name`` on a machine
that is online. One that is not there is a FileNotFoundError that says so, which the run reports
as one line naming ``task.model`` (or ``task.dataset``) before any work.
"""

from __future__ import annotations

import re
from pathlib import Path

# org/name, or a bare legacy name (bert-base-uncased): what the Hub accepts as a repository id
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def looks_like_hub_id(name: str) -> bool:
    """``name`` is spelled like a Hub id and is no local path."""
    return bool(HUB_ID.fullmatch(name)) and not Path(name).expanduser().exists()


def cached_snapshot(repo_id: str, repo_type: str = "model") -> Path:
    """The folder of ``repo_id``'s cached snapshot (its ``main`` revision); FileNotFoundError when
    the cache does not hold it."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError, ...: all mean "not here"
        kind = "model" if repo_type == "model" else "dataset"
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a {kind} in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); nothing downloads during a run: fetch it once with "
            f"`hf download {repo_id}{' --repo-type dataset' if kind == 'dataset' else ''}` where there is a network, or "
            f"give a folder ({type(err).__name__})"
        ) from None
