"""The names a run folder holds, and the checks that keep raflora's writes inside what it owns.

A run folder (:mod:`raflora.runtimes.folder`) holds ``metrics.jsonl``, ``config.toml``, ``run.json``,
``checkpoints/`` and ``adapter/``, plus ``.replaced/`` while ``--overwrite`` replaces a run and
``.raflora.lock`` while a run writes it. Every file is replaced atomically (:func:`replace_file`):
a failed write (a full disk) leaves the old file as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from raflora.config import ConfigError
from raflora.folder_lock import LOCK

METRICS = "metrics.jsonl"
CONFIG = "config.toml"
RUN_JSON = "run.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
FLOWER_NODES = "flower_nodes.json"  # which node owns each client id (runtimes.flower.roster.OWNERS_FILE)
RUN_FILES = (METRICS, CHECKPOINTS, ADAPTER, CONFIG, RUN_JSON, FLOWER_NODES)
REPLACED = ".replaced"  # the old run's files while --overwrite replaces them with a new run
OWNED = (*RUN_FILES, REPLACED, LOCK)


def refuse_links(folder: Path, names=OWNED) -> None:
    """ConfigError when one of ``names`` in ``folder`` (or a checkpoint) is a symbolic link: raflora
    would write (or delete) through it, outside the folder."""
    paths = [folder / name for name in names]
    if (folder / CHECKPOINTS).is_dir() and not (folder / CHECKPOINTS).is_symlink():
        paths += sorted((folder / CHECKPOINTS).iterdir())
    for path in paths:
        if path.is_symlink():
            raise ConfigError(
                f"{str(path)!r} is a symbolic link; raflora writes only real files and folders inside a "
                "run folder (replace the link by what it points to, or write elsewhere)"
            )


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and ``os.replace``: the old
    file stays whole until the new one is complete on disk; the temporary file goes on failure."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path``; a write that fails (a full disk) is cut back to the old end, so
    the file never holds half a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.fstat(fd).st_size
        data = memoryview(line.encode())
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)
