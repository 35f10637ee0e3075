"""One small comparison (synthetic task, 3 methods, 3 rounds, seconds) shared by the report tests."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from raflora.cli import main

CONFIG = """
[run]
name = "cmp"
rounds = 3
threads = 1
[federation]
num_clients = 4
[ranks]
ranks = [2, 4]
r_max = 4
[train]
local_steps = 2
[task]
name = "synthetic"
train_size = 120
test_size = 40
[eval]
every = 2
"""

METHODS = ("raflora", "flexlora", "zero_pad")


@pytest.fixture(scope="session")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "cmp.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="session")
def comparison(config_file, tmp_path_factory):
    """``raflora compare`` into a fresh folder; (folder, what it printed)."""
    folder = tmp_path_factory.mktemp("compare") / "cmp"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["compare", str(config_file), "--methods", ",".join(METHODS), "--out", str(folder), "--quiet"])
    assert code == 0
    return folder, printed.getvalue()


SEEDS = (0, 1)
SEEDED_METHODS = ("flexlora", "raflora")


@pytest.fixture(scope="session")
def seeded(config_file, tmp_path_factory):
    """``raflora compare --seeds 0,1 --reference flexlora`` of two methods; (folder, what it printed)."""
    folder = tmp_path_factory.mktemp("seeds") / "cmp"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            [
                "compare",
                str(config_file),
                "--methods",
                ",".join(SEEDED_METHODS),
                "--seeds",
                ",".join(map(str, SEEDS)),
                "--out",
                str(folder),
                "--quiet",
            ]
        )
    assert code == 0
    return folder, printed.getvalue()


SYNTHETIC = Path(__file__).resolve().parents[2] / "configs" / "synthetic.toml"
FAST = ["--rounds", "2", "--set", "train.local_steps=2", "--quiet"]


@pytest.fixture(scope="session")
def swept(tmp_path_factory):
    """``raflora sweep`` of configs/synthetic.toml: two learning rates and a rank policy with its
    ranks, two methods, two seeds, two short rounds; the sweep folder."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "sweep",
                str(SYNTHETIC),
                "--methods",
                "raflora,flexlora",
                "--seeds",
                "0,1",
                "--out",
                str(out),
                "--grid",
                "train.lr=0.01,0.05",
                "--grid",
                "ranks.policy=uniform ranks.ranks=[2,8]",
                *FAST,
            ]
        )
    assert code == 0
    return out
