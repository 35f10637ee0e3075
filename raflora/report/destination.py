"""Where ``raflora report`` writes when no ``--out`` is given, and the check that it never writes
over anything silently."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from raflora.config import ConfigError


def report_folder(runs: Sequence[str | Path]) -> Path:
    """One folder (a run, a compare or sweep folder) keeps its report in ``report/`` inside it, as
    compare and sweep do; several get a folder named after them in the folder that holds them
    (``report-a+b``), so that unrelated reports never share one."""
    if len(runs) == 1:
        return Path(runs[0]) / "report"
    names = "+".join(Path(run).resolve().name for run in runs)
    if len(names) > 60:  # a long list: the first name, how many more, a digest of all of them
        digest = hashlib.sha256("\n".join(str(Path(r).resolve()) for r in runs).encode()).hexdigest()[:8]
        names = f"{Path(runs[0]).resolve().name}+{len(runs) - 1}-more-{digest}"
    parents = [Path(run).resolve().parent for run in runs]
    common = Path(*_common_parts(parents))
    try:
        common = common.relative_to(Path.cwd())
    except ValueError:
        pass
    return common / f"report-{names}"


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = paths[0].parts
    for path in paths[1:]:
        n = 0
        while n < min(len(parts), len(path.parts)) and parts[n] == path.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


def clear_target(folder: Path, overwrite: bool) -> None:
    """Refuse to write over anything: a folder that holds a report is replaced only with
    ``overwrite``, a folder that holds other files never."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not (folder / "report.json").is_file():
        raise ConfigError(f"{str(folder)!r} exists and holds no report; choose another --out")
    if not overwrite:
        raise ConfigError(
            f"{str(folder)!r} already holds a report; pass --overwrite to replace it or --out to write elsewhere"
        )
    shutil.rmtree(folder)  # no plot of a run that is no longer in the report stays behind
