"""eval.validation: a seeded hold-out of the training data that every evaluated round is scored
on, while the test split is read once, after the last round."""

from __future__ import annotations

import pytest
from runtimes.conftest import small_config

from raflora.config import ConfigError
from raflora.config_io import config_from_dict
from raflora.federation.setup import build_setup, hold_out, split_among_clients
from raflora.report.load import load_runs
from raflora.report.summary import build_report
from raflora.runtimes.embedded import run_federation
from raflora.tasks.base import TaskData


def _data(n: int = 50) -> TaskData:
    return TaskData(
        train=[{"i": i} for i in range(n)], test=[{"i": -1}], train_labels=[i % 3 for i in range(n)], train_keys=None
    )


def test_hold_out_is_seeded_disjoint_and_keeps_labels_aligned(tmp_path):
    config = config_from_dict(small_config(tmp_path, eval={"validation": 0.2}))
    data = _data()
    kept, held = hold_out(data, config)
    again_kept, again_held = hold_out(data, config)
    assert held == again_held and kept.train == again_kept.train  # seeded
    assert len(held) == 10 and len(kept.train) == 40
    ids = {ex["i"] for ex in held}
    assert ids.isdisjoint(ex["i"] for ex in kept.train) and len(ids | {ex["i"] for ex in kept.train}) == 50
    assert kept.train_labels == [ex["i"] % 3 for ex in kept.train]  # labels follow their examples
    other = config_from_dict(small_config(tmp_path, run={"seed": 4}, eval={"validation": 0.2}))
    assert hold_out(data, other)[1] != held  # another seed, another hold-out
    zero = config_from_dict(small_config(tmp_path))
    assert hold_out(data, zero) == (data, [])  # nothing held out by default


def test_the_clients_never_see_the_validation_examples(tmp_path):
    config = config_from_dict(small_config(tmp_path, eval={"validation": 0.25}))
    setup = build_setup(config)
    assert len(setup.validation) == 40  # 0.25 of the 160 training examples
    pool = [setup.data.train[i] for shard in setup.shards for i in shard]
    assert not {id(ex) for ex in pool} & {id(ex) for ex in setup.validation}
    assert split_among_clients(config, setup.data) == setup.shards


def test_rounds_are_scored_on_validation_and_the_test_split_once(tmp_path, monkeypatch):
    config = config_from_dict(small_config(tmp_path / "run", run={"rounds": 3}, eval={"validation": 0.2}))
    read = []
    from raflora.tasks.synthetic import SyntheticTask

    evaluate = SyntheticTask.evaluate

    def counting(self, model, examples, batch_size):
        read.append(len(examples))
        return evaluate(self, model, examples, batch_size)

    monkeypatch.setattr(SyntheticTask, "evaluate", counting)
    records = run_federation(config)
    assert [r["accuracy"] is None for r in records] == [True, True, False]  # the test split after the last round
    assert all(r["val_accuracy"] is not None and r["val_loss"] is not None for r in records)
    assert read == [32, 32, 32, 64]  # validation (0.2 of 160) every round, the 64 test examples once
    report = build_report(load_runs([tmp_path / "run"]))
    summary = report["runs"][0]
    best = max(records, key=lambda r: (r["val_accuracy"], -r["round"]))
    assert summary["best_metric"] == {"round": best["round"], "value": best["val_accuracy"]}
    assert summary["final_metric"]["value"] == records[-1]["accuracy"] and report["best_on"] == "validation"


def test_without_validation_nothing_changes_in_the_records(tmp_path):
    records = run_federation(config_from_dict(small_config(tmp_path / "run")))
    assert all("val_accuracy" not in r and r["accuracy"] is not None for r in records)
    assert build_report(load_runs([tmp_path / "run"]))["best_on"] == "test"


@pytest.mark.parametrize(
    "share, message",
    [
        (-0.1, r"eval\.validation must be in \[0, 0\.5\]"),
        (0.6, r"eval\.validation = 0\.6 is out of range; it must be at most 0\.5"),
    ],
)
def test_a_validation_share_out_of_range_is_one_config_line(tmp_path, share, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(small_config(tmp_path, eval={"validation": share}))
