"""The progress shown while a model loads and evaluates: only when the command line asks for it,
and never a change in the numbers."""

from __future__ import annotations

import time

from raflora.tasks.common import progress, progress_bars, spinner
from raflora.tasks.synthetic import SyntheticTask


def test_evaluation_shows_a_bar_only_when_asked(capsys):
    task = SyntheticTask(train_size=8, test_size=50)
    model, test = task.load_model(), list(task.load_data().test)
    quiet = task.evaluate(model, test, 8)
    assert capsys.readouterr().err == ""
    with progress_bars(True):
        shown = task.evaluate(model, test, 8)
    err = capsys.readouterr().err
    assert shown == quiet
    assert "evaluating" in err and "/7 [" in err  # ceil(50 / 8) batches


def test_progress_yields_the_batches(capsys):
    items = list(range(10))
    with progress_bars(True):
        chunks = list(progress(items, 4, "x"))
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] == list(progress(items, 4, "x"))


def test_spinner_turns_while_a_model_loads(capsys):
    with spinner("loading model tiny"):
        time.sleep(0.3)
    assert capsys.readouterr().err == ""
    with progress_bars(True), spinner("loading model tiny"):
        time.sleep(0.6)
    err = capsys.readouterr().err
    assert "loading model tiny" in err and any(mark in err for mark in "|/-\\")
