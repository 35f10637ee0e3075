"""Grouping runs by setting and pairing them with the reference method, on hand-made summaries
(no runs): a method's own option (florist's tau) does not split the pairing, anything else does."""

from __future__ import annotations

import pytest

from raflora.report.groups import build_groups, paired_differences, stats


def _summary(label, method, final, seed):
    point = {"round": 3, "value": final}
    return {
        "label": label,
        "method": method,
        "r_min": 2,
        "final_metric": point,
        "best_metric": point,
        "rho_rmin_last": {"round": 3, "value": 0.5 + seed / 10},
        "bytes_up": 100,
        "bytes_down": 200,
        "seconds": 1.0,
        "per_round": [{"round": 3, "accuracy": final, "rho_rmin": 0.5 + seed / 10}],
        "energy_per_round": [{"round": 3, "shares": {"1-2": 0.5, "3-4": 0.5}}],
    }


def _flat(method, seed, **extra):
    return {
        "federation.method": method,
        "run.seed": seed,
        "run.out": f"runs/{method}/{seed}",
        "federation.method.tau": 0.9,
        "train.lr": 0.01,
        **extra,
    }


def test_stats():
    assert stats([1.0, 2.0, 3.0]) == {
        "n": 3,
        "mean": 2.0,
        "std": 1.0,
        "min": 1.0,
        "max": 3.0,
        "values": [1.0, 2.0, 3.0],
    }
    assert stats([0.5])["std"] is None and stats([None]) is None


def test_a_method_option_does_not_split_the_pairing_other_keys_do():
    runs = [
        ("flora", 0.80, {}),
        ("florist", 0.70, {}),
        ("florist", 0.60, {"federation.method.tau": 0.8}),
        ("florist", 0.50, {"train.lr": 0.1}),
    ]
    summaries, flats = [], []
    for k, (method, final, extra) in enumerate(runs):
        for seed in (0, 1):
            summaries.append(_summary(f"g{k}/seed-{seed}", method, final + seed / 100, seed))
            flats.append(_flat(method, seed, **extra))
    groups, settings = build_groups(summaries, flats, "accuracy")
    assert [g["label"] for g in groups] == ["g0", "g1", "g2", "g3"] and [g["seeds"] for g in groups] == [[0, 1]] * 4
    assert groups[1]["final_metric"]["mean"] == pytest.approx(0.705)
    pairs = paired_differences(groups, settings, summaries, "flora")
    # florist at tau 0.9 and 0.8 pair with flora; florist at another learning rate has no flora to pair with
    assert [(p["reference"], p["other"]) for p in pairs] == [("g0", "g1"), ("g0", "g2")]
    assert pairs[1]["final_metric"]["per_seed"] == {"0": pytest.approx(0.2), "1": pytest.approx(0.2)}
    assert pairs[0]["rho_rmin_last"]["mean"] == pytest.approx(0.0)


def test_runs_that_differ_only_in_threads_are_one_setting():
    # how fast a run went (run.threads) is not part of its setting: a method run with 2 threads is
    # paired seed by seed with one run with 1 thread; a learning rate still splits the pairing
    summaries = [
        _summary(f"{m}/seed-{seed}", m, final + seed / 100, seed)
        for m, final in (("carryover", 0.8), ("flexlora", 0.7), ("zero_pad", 0.6))
        for seed in (0, 1)
    ]
    flats = [
        _flat(m, seed, **{"run.threads": threads, **extra})
        for m, threads, extra in (("carryover", 2, {}), ("flexlora", 1, {}), ("zero_pad", 1, {"train.lr": 0.1}))
        for seed in (0, 1)
    ]
    groups, settings = build_groups(summaries, flats, "accuracy")
    pairs = paired_differences(groups, settings, summaries, "carryover")
    assert [(p["reference"], p["other"]) for p in pairs] == [("carryover", "flexlora")]
    assert pairs[0]["final_metric"]["per_seed"] == {"0": pytest.approx(0.1), "1": pytest.approx(0.1)}
