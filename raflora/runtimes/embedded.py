"""The embedded runtime: every client and the server in this process, the default.

The server's state and the clients' own kept factors (:attr:`Method.private`, e.g. FedSA-LoRA's
``B``) are held apart: ``kept`` is the simulated clients' storage, which the server code never
reads; it is checkpointed beside the server's state so that a resumed run repeats an
uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Generator
from pathlib import Path

from raflora.config import Config
from raflora.federation.round import run_round, steps_in_round
from raflora.federation.setup import RunSetup
from raflora.federation.state import FederationState
from raflora.folder_lock import hold_folder
from raflora.runtimes.folder import (
    finish_run,
    last_round,
    open_run,
    prepare_folder,
    record_round,
    resume_kept,
    settle_replaced,
)


def run_federation(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run (or continue) the federation described by ``config``; returns every round's metrics.

    ``stop_after=k`` ends after round ``k`` with its checkpoint written (an interruption that
    ``resume=True`` continues). ``log`` receives one summary line per round; ``progress`` shows a
    tqdm bar over the round's local steps; ``on_round`` receives each round's metrics record (the
    ``metrics.jsonl`` line) once its checkpoint is written.
    """
    records = federation_rounds(
        config, resume=resume, overwrite=overwrite, stop_after=stop_after, log=log, progress=progress
    )
    while True:
        try:
            record = next(records)
        except StopIteration as done:
            return done.value
        if on_round is not None:
            on_round(record)


def federation_rounds(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Generator[dict, None, list[dict]]:
    """:func:`run_federation` one round at a time: yields each round's metrics record once its
    checkpoint is written and returns every round's metrics. Closing the generator early stops the
    run after the last round it yielded (its checkpoint kept: ``resume=True`` continues it)."""
    with hold_folder(config.out):  # one writer per run folder, from the first check to the adapter
        prepare_folder(config, Path(config.out), resume, overwrite)
        say = log or (lambda line: None)
        try:
            setup, state = open_run(config, resume, say)
            kept = resume_kept(config, resume, state)
            for round_ in range(state.round + 1, last_round(config, stop_after) + 1):
                record_round(setup, state, _one_round(setup, state, round_, kept, progress), say, kept)
                yield copy.deepcopy(state.metrics[-1])  # the caller's to change; the run keeps its own
        except BaseException:
            settle_replaced(Path(config.out))  # --overwrite: the old run back, unless a new checkpoint exists
            raise
        return finish_run(setup, state, stop_after, say)


def _one_round(setup: RunSetup, state: FederationState, round_: int, kept: dict, progress: bool) -> dict:
    if not progress:
        return run_round(setup, state, round_, kept)
    from tqdm import tqdm

    total = steps_in_round(setup, round_)
    with tqdm(total=total, desc=f"round {round_}/{setup.config.run.rounds}", unit="step", leave=False) as bar:
        return run_round(setup, state, round_, kept, on_step=bar.update)
