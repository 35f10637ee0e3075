"""The kept experiment numbers are what the code on main computes: scripts/reproduce.py reruns
kept synthetic runs (one per method, the first 5 of their 20 rounds) and compares every field of
their records with the committed metrics.jsonl. It fails when a change of the code changes a
published number; the experiment must then be rerun (docs/results.md)."""

from __future__ import annotations

import pytest

from . import ROOT, load_script

RESULTS = ROOT / "results"
reproduce = load_script("reproduce")

# every method once: experiment 2 ran the nine mixed-rank baselines and raflora (before
# empty_partition existed: read as its code ran, dropping), experiment 6 carryover, 4e raflora keeping
KEPT = [
    f"exp2-synthetic/{m}/seed-0"
    for m in ("raflora", "flexlora", "zero_pad", "hetlora", "replication", "ffa", "fedsa", "flora", "florist")
]
KEPT += ["exp6-synthetic/carryover/seed-0", "exp4e-synthetic/point-1/raflora/seed-0"]


@pytest.mark.parametrize("run", KEPT)
def test_a_kept_synthetic_run_reproduces(run):
    folder = RESULTS / run
    assert (folder / "metrics.jsonl").is_file(), f"{run} is not kept under results/"
    # floats within 1e-5: room for another CPU's summation order over 5 rounds, far below one test
    # example (0.002) or any change of the method
    assert reproduce.reproduce(folder, rounds=5, tolerance=1e-5) is None


def test_a_changed_record_is_reported_with_its_round_and_field():
    kept = [
        {"round": 1, "accuracy": 0.5, "ranks": [2, 4], "seconds": 1.0},
        {"round": 2, "accuracy": 0.6, "ranks": [2, 4], "seconds": 1.0},
    ]
    same = [{**r, "seconds": 9.0, "added_later": 1} for r in kept]
    assert reproduce.first_difference(kept, same) is None  # wall time and new fields are not compared
    moved = [kept[0], {**kept[1], "accuracy": 0.602}]
    assert reproduce.first_difference(kept, moved, tolerance=1e-5).startswith("round 2: accuracy")
    assert reproduce.first_difference(kept, [kept[0], {**kept[1], "accuracy": 0.6 + 1e-7}], 1e-5) is None
    assert reproduce.first_difference(kept, [kept[0], {**kept[1], "accuracy": 0.6 + 1e-7}]) is not None
    assert reproduce.first_difference(kept, [kept[0], {**kept[1], "ranks": [2, 8]}]).startswith("round 2: ranks")
    assert "2 rounds kept, 1 rerun" == reproduce.first_difference(kept, kept[:1])
    nan = [{"round": 1, "share": float("nan")}]
    assert reproduce.first_difference(nan, [{"round": 1, "share": float("nan")}]) is None
    assert reproduce.first_difference(nan, [{"round": 1, "share": 0.5}]).startswith("round 1: share")
    lost = [kept[0], {k: v for k, v in kept[1].items() if k != "ranks"}]
    assert reproduce.first_difference(kept, lost).startswith("round 2: ranks")
