"""One writer per folder: an OS lock held while a command writes a run folder (or an export folder).

The lock is ``flock`` on ``FOLDER/.raflora.lock``, a file that also records its holder (pid, host,
command, start time) so that a second writer is refused with one line naming the first. The
operating system releases the lock when its holder dies, so a killed run never blocks the next
one: the file a dead holder leaves behind is locked by the next writer, which records itself in
it. A holder removes the file as it lets go; a writer that locked a file removed meanwhile tries
again on the new one (the inode check), so two writers never hold two different files.

One process may take the lock of a folder it already holds (the CLI and the runtime both take it);
another thread of that process may not.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raflora.config import ConfigError

LOCK = ".raflora.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is then advisory only through the info file
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, list] = {}  # resolved folder -> [thread id, depth] for the locks this process holds


class FolderInUse(ConfigError):
    """Another process (or thread) holds the folder; the message names it."""


def command_line() -> str:
    """The command this process runs, as a user would recognise it."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if name in ("__main__.py", "cli.py"):
        name = "raflora"
    return " ".join([name, *sys.argv[1:]])


def holder_text(info: dict) -> str:
    """``raflora run c.toml (pid 12, host h, since 2025-01-01T10:00:00+00:00)``."""
    if not info:
        return "another process (it has not recorded itself yet)"
    return (
        f"{info.get('command', 'another process')} (pid {info.get('pid', '?')}, host {info.get('host', '?')}, "
        f"since {info.get('started', '?')})"
    )


@contextmanager
def hold_folder(folder: Path | str, command: str | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block (creating ``folder``; a folder this call created
    and left empty is removed again). FolderInUse, a ConfigError, when another writer holds it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    held = _HELD.get(key)
    if held is not None:
        if held[0] != threading.get_ident():
            raise FolderInUse(f"{str(folder)!r} is being written by another thread of this process")
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    try:
        fd = _acquire(folder, command or command_line())
    except BaseException:
        if created:
            _remove_if_empty(folder)
        raise
    _HELD[key] = [threading.get_ident(), 1]
    try:
        yield
    finally:
        del _HELD[key]
        _release(fd, folder / LOCK)
        if created:
            _remove_if_empty(folder)


def _acquire(folder: Path, command: str) -> int:
    path = folder / LOCK
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as err:
            if path.is_symlink():
                raise ConfigError(f"{str(path)!r} is a symbolic link; remove it (raflora writes no links)") from None
            raise err
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise FolderInUse(
                    f"{str(folder)!r} is in use by {holder_text(info)}; wait until it ends or write elsewhere"
                ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as it let go: lock the new one
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except BaseException:  # a full disk: let go of the lock and its file, the command ends here
        _release(fd, path)
        raise
    return fd


def _read_info(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _release(fd: int, path: Path) -> None:
    try:
        path.unlink()  # while still locked: a waiting writer sees the file gone and takes a new one
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
