"""A write the disk refuses (full, read-only) ends a command with one line and exit code 74
(EX_IOERR), and loses nothing: metrics.jsonl holds no half line, the last checkpoint stays whole,
and a resumed run continues to the numbers of an uninterrupted one.

The disk-full cases run everywhere by making the write path itself fail (``os.write`` of
metrics.jsonl, the checkpoint's file writer); the real ones mount a small tmpfs, which needs root
and a system that allows mounts, and are skipped elsewhere (root ignores ``chmod``, so a read-only
folder is a read-only mount)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest

from raflora.cli import IO_ERROR, main
from raflora.config_io import config_from_dict, config_to_toml
from raflora.federation import checkpoint_files, run_files
from raflora.federation.state import latest_checkpoint, load_checkpoint

from .conftest import read_metrics, small_config, without_time


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "unused", run={"rounds": 2}))))
    return path


@pytest.fixture
def uninterrupted(tmp_path, config_file, capsys):
    assert main(["run", str(config_file), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    capsys.readouterr()
    return read_metrics(tmp_path / "whole")


def full_disk_error() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot write"), err
    return err


class FullOnSecondWrite:
    """``os`` as run_files sees it, whose second ``write`` puts half its bytes down and fails."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.calls += 1
        if self.calls < 2:
            return os.write(fd, data)
        os.write(fd, bytes(data[: len(data) // 2]))
        raise full_disk_error()


def test_disk_full_while_appending_metrics_leaves_no_half_line(
    tmp_path, config_file, uninterrupted, capsys, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setattr(run_files, "os", FullOnSecondWrite())
    assert main(["run", str(config_file), "--out", str(out), "--quiet"]) == IO_ERROR
    assert "No space left on device (errno ENOSPC)" in one_line(capsys)
    assert without_time(read_metrics(out)) == without_time(uninterrupted[:1])  # round 1 whole, nothing of round 2
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert without_time(read_metrics(out)) == without_time(uninterrupted)


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(
    tmp_path, config_file, uninterrupted, capsys, monkeypatch
):
    out = tmp_path / "run"
    write_file = checkpoint_files.write_file

    def fail_in_round_2(path, data):
        if "round_0002" in str(path):
            path.write_bytes(data[: len(data) // 2])
            raise full_disk_error()
        write_file(path, data)

    monkeypatch.setattr(checkpoint_files, "write_file", fail_in_round_2)
    assert main(["run", str(config_file), "--out", str(out), "--quiet"]) == IO_ERROR
    one_line(capsys)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["round_0001"]  # no half-written folder left
    assert load_checkpoint(out / "checkpoints" / "round_0001").round == 1
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert without_time(read_metrics(out)) == without_time(uninterrupted)


def test_an_oserror_that_is_no_write_failure_stays_a_traceback(config_file, monkeypatch):
    import raflora.runtimes

    def lost(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "a file the code itself lost")

    monkeypatch.setattr(raflora.runtimes, "run", lost)
    with pytest.raises(FileNotFoundError):
        main(["run", str(config_file), "--quiet"])


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk; skipped where this process may not mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    """Fill ``disk`` to the last byte."""
    with open(disk / f"filler-{uuid.uuid4().hex}", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    with open(disk / "filler-tail", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0")
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_real_full_disk_is_one_line_and_the_run_resumes(tmpfs, config_file, uninterrupted, capsys):
    out = tmpfs / "run"
    assert main(["run", str(config_file), "--out", str(out), "--stop-after", "1", "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    fill(tmpfs)
    assert main(["run", "--resume", str(out), "--quiet"]) == IO_ERROR
    assert "No space left on device" in one_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # config, metrics, run.json whole
    assert latest_checkpoint(out / "checkpoints").name == "round_0001"
    for filler in tmpfs.glob("filler-*"):
        filler.unlink()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert without_time(read_metrics(out)) == without_time(uninterrupted)


def test_a_read_only_disk_is_one_line_for_run_resume_and_export(tmpfs, config_file, capsys):
    out = tmpfs / "run"
    assert main(["run", str(config_file), "--out", str(out), "--stop-after", "1", "--quiet"]) == 0
    before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    capsys.readouterr()
    for args in (
        ["run", "--resume", str(out), "--quiet"],
        ["run", str(config_file), "--out", str(tmpfs / "new"), "--quiet"],
        ["export", str(out), str(tmpfs / "exp")],
    ):
        assert main(args) == IO_ERROR
        assert "Read-only file system (errno EROFS)" in one_line(capsys)
    assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
