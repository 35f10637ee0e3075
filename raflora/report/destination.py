"""Where ``raflora report`` writes when no ``--out`` is given, and the check that it never writes
over anything silently."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from raflora.config import ConfigError
from raflora.folder_lock import LOCK, hold_folder

STAGING = ".raflora-staging"  # raflora.federation.export_folder.STAGING (imported lazily: it loads torch)


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


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse to write over anything: a folder that holds a report is replaced only with
    ``overwrite``, a folder that holds other files never."""
    if folder.is_symlink():
        raise ConfigError(f"{str(folder)!r} is a symbolic link; give the folder it points to, or another --out")
    if not folder.exists() or (folder.is_dir() and not _entries(folder)):
        return
    if not (folder / "report.json").is_file():
        raise ConfigError(f"{str(folder)!r} exists and holds no report; choose another --out")
    if not overwrite:
        raise ConfigError(
            f"{str(folder)!r} already holds a report; pass --overwrite to replace it or --out to write elsewhere"
        )


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name not in (LOCK, STAGING)]


def write_report_folder(runs: Sequence[str | Path], folder: Path, **options) -> dict:
    """:func:`raflora.report.write_report` staged and recorded like an export
    (:mod:`raflora.federation.export_folder`): the files of the report it replaces go (no plot of a
    run that is no longer in the report stays behind), the files raflora did not write stay, and a
    report that fails half-way leaves the old one whole. Returns the report's numbers."""
    from raflora.federation.export_folder import write_export
    from raflora.report import write_report

    report: dict = {}
    with hold_folder(folder):
        # a report folder from before records: its files of the names this report writes are raflora's
        legacy = (folder / "report.json").is_file()
        write_export(folder, lambda staging: report.update(write_report(runs, staging, **options)), True, legacy=legacy)
    return report
