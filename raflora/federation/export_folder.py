"""An export folder: the files one export wrote, recorded, so that the next one replaces only those.

An export (``raflora export``, and a run's own ``adapter/``) is written into ``OUT/.raflora-staging/``
first; only when it is complete are its files moved into ``OUT`` and listed in
``OUT/raflora-files.json``. What the export writes is therefore whatever the writer put in the
staging folder (PEFT's files, a tokenizer's, the model card): that record is the one list of it.

- ``OUT`` absent or empty: written.
- ``OUT`` holds an earlier export: replaced only with ``overwrite``; the files its record lists go
  (those the new export does not write again too), every other file stays.
- ``OUT`` holds files raflora did not write: refused, unless ``overwrite``, and then the export is
  written beside them; a file of the same name as one the export writes is never replaced.

A failed write (a full disk, a bad model) leaves ``OUT`` as it was. The files are written readable by
all (0644, folders 0755), as ``save_pretrained`` folders usually are: some writers (safetensors)
create their files private (0600), which a copied or shared adapter folder must not keep.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from raflora.config import ConfigError
from raflora.federation.run_files import replace_file
from raflora.folder_lock import LOCK

RECORD = "raflora-files.json"
STAGING = ".raflora-staging"
RECORD_FORMAT = 1


def recorded(out: Path) -> list[str] | None:
    """The names the last export into ``out`` wrote, None when ``out`` holds no record of one."""
    path = out / RECORD
    if path.is_symlink() or not path.is_file():
        return None
    try:
        files = json.loads(path.read_bytes())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{str(path)!r} is not a record raflora can read; remove it or choose another folder"
        ) from None
    if not isinstance(files, list) or not all(isinstance(n, str) and n and "/" not in n for n in files):
        raise ConfigError(f"{str(path)!r} is not a record raflora can read; remove it or choose another folder")
    return files


def _others(out: Path) -> list[str]:
    previous = set(recorded(out) or [])
    return sorted(p.name for p in out.iterdir() if p.name not in previous | {RECORD, STAGING, LOCK})


def check_target(out: Path, overwrite: bool, what: str = "export") -> None:
    """ConfigError, before any work, for a folder the export may not write (see the module)."""
    if out.is_symlink():
        raise ConfigError(f"{str(out)!r} is a symbolic link; give the folder it points to, or another one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{str(out)!r} is a file, not a folder; choose another {what} folder")
    if not out.exists() or overwrite:
        recorded(out) if out.exists() else None  # an unreadable record is refused now, not after the work
        return
    if recorded(out) is not None:
        raise ConfigError(f"{str(out)!r} already holds an {what}; pass --overwrite to replace it")
    others = _others(out)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ConfigError(
            f"{str(out)!r} holds files raflora did not write ({shown}); choose a new or empty folder, or pass "
            "--overwrite to write beside them (they are never replaced)"
        )


def write_export(out: Path, write: Callable[[Path], None], overwrite: bool, *, legacy: bool = False) -> list[str]:
    """``write(staging)`` and then its files into ``out`` (see the module); returns their names.
    ``legacy``: ``out`` is raflora's own even without a record (a run's ``adapter/`` written before
    records existed), so its files of the names the new export writes are replaced."""
    check_target(out, overwrite)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING
    if staging.is_symlink():
        raise ConfigError(f"{str(staging)!r} is a symbolic link; remove it")
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's leftover: raflora's own
    try:
        staging.mkdir()
        write(staging)
        _readable(staging)
        names = sorted(p.name for p in staging.iterdir())
        previous = recorded(out)
        ours = set(previous if previous is not None else (names if legacy else []))
        clash = [n for n in names if n not in ours and (os.path.lexists(out / n) or n == RECORD)]
        if clash:
            raise ConfigError(
                f"{str(out / clash[0])!r} was not written by raflora and the export would replace it; move it "
                "or choose another folder"
            )
        # the record first lists every name of both exports: a crash in between leaves nothing unlisted
        _write_record(out, sorted(ours | set(names)))
        for name in sorted(ours - set(names)):
            _remove(out / name)
        for name in names:
            if (out / name).is_dir() and not (out / name).is_symlink():
                shutil.rmtree(out / name)
            os.replace(staging / name, out / name)
        _write_record(out, names)
        return names
    except BaseException:
        if created:
            shutil.rmtree(staging, ignore_errors=True)
            if not any(out.iterdir()):
                out.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _readable(folder: Path) -> None:
    """Mode 0644 for every file under ``folder``, 0755 for every folder (links are left alone)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _write_record(out: Path, names: list[str]) -> None:
    from raflora.version import __version__

    record = {"format": RECORD_FORMAT, "written_by": f"raflora {__version__}", "files": names}
    replace_file(out / RECORD, (json.dumps(record, indent=1) + "\n").encode())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
