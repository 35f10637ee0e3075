"""One writer per run folder: a second run, resume or export into a folder being written exits 2
with one line naming the holder; the lock of a dead process blocks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from raflora.cli import main
from raflora.config_io import config_from_dict, config_to_toml
from raflora.folder_lock import LOCK, FolderInUse, hold_folder

from .conftest import read_metrics, small_config

HOLDER = """
import sys, time
from raflora.folder_lock import hold_folder
with hold_folder(sys.argv[1], "raflora run holder.toml"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds a folder's lock; yields a function folder -> Popen."""
    started = []

    def start(folder: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "unused", run={"rounds": 2}))))
    return path


def test_a_second_run_or_resume_is_refused_naming_the_holder(tmp_path, config_file, holder, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--stop-after", "1", "--quiet"]) == 0
    before = (out / "metrics.jsonl").read_bytes()
    proc = holder(out)
    capsys.readouterr()
    for args in (["run", str(config_file), "--out", str(out), "--overwrite"], ["run", "--resume", str(out)]):
        assert main([*args, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {str(out)!r} is in use by raflora run holder.toml")
        assert f"pid {proc.pid}, host " in err
    assert (out / "metrics.jsonl").read_bytes() == before
    # the holder is killed (no chance to clean up): its lock file stays and blocks nothing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK).is_file()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert [m["round"] for m in read_metrics(out)] == [1, 2]
    assert not (out / LOCK).exists()  # a holder that ends removes its lock file


def test_export_into_a_folder_being_written_is_refused(tmp_path, config_file, holder, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    holder(tmp_path / "exp")
    capsys.readouterr()
    assert main(["export", str(out), str(tmp_path / "exp")]) == 2
    assert "is in use by raflora run holder.toml" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [LOCK]


def test_another_thread_of_the_process_is_refused_the_same_thread_may_reenter(tmp_path):
    errors = []
    with hold_folder(tmp_path / "f"):
        with hold_folder(tmp_path / "f"):  # the CLI and the runtime both take it
            pass
        assert (tmp_path / "f" / LOCK).is_file()

        def other():
            try:
                with hold_folder(tmp_path / "f"):
                    pass
            except FolderInUse as err:
                errors.append(str(err))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors and "another thread of this process" in errors[0]
    assert not (tmp_path / "f").exists()  # created by the lock, left empty: removed again


def test_a_folder_that_existed_is_kept_and_the_lock_file_goes(tmp_path):
    (tmp_path / "f").mkdir()
    with hold_folder(tmp_path / "f"):
        assert (tmp_path / "f" / LOCK).is_file()
    assert (tmp_path / "f").is_dir() and not any((tmp_path / "f").iterdir())
