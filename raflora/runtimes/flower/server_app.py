"""The Flower ServerApp: open the run folder, find which node plays which client, run the rounds
with :class:`RafloraStrategy`, write the adapter -- the embedded runner's steps around Flower's loop."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Callable

from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from raflora.config import Config, ConfigError
from raflora.config_io import config_from_dict
from raflora.runtimes.folder import finish_run, last_round, open_run, prepare_folder
from raflora.runtimes.flower.records import run_config_toml
from raflora.runtimes.flower.strategy import RafloraStrategy


def discover_clients(grid: Grid, num_clients: int, wait_s: float = 600.0) -> dict[int, int]:
    """``{client index: node id}``: every connected node is asked (a QUERY message) for its
    ``partition-id``; waits up to ``wait_s`` for nodes 0..num_clients-1 to be connected."""
    nodes: dict[int, int] = {}
    deadline = time.monotonic() + wait_s
    asked: set[int] = set()
    while len(nodes) < num_clients:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
            for reply in grid.send_and_receive(queries, timeout=max(1.0, deadline - time.monotonic())):
                asked.add(reply.metadata.src_node_id)
                if reply.has_error():
                    continue
                client = int(reply.content["node"]["partition-id"])
                if 0 <= client < num_clients:
                    nodes.setdefault(client, reply.metadata.src_node_id)
        if len(nodes) < num_clients:
            if time.monotonic() > deadline:
                missing = sorted(set(range(num_clients)) - set(nodes))
                raise RuntimeError(f"no SuperNode with partition-id {missing[:10]} connected in {wait_s:.0f} s")
            time.sleep(1.0)
    return nodes


def serve(grid: Grid, config: Config, *, resume: bool = False, stop_after: int | None = None,
          log: Callable[[str], None] | None = None, timeout: float = 3600.0) -> list[dict]:
    """The whole run on ``grid``, in a run folder that :func:`prepare_folder` has checked."""
    say = log or (lambda line: None)
    setup, state = open_run(config, resume, say)
    rounds = last_round(config, stop_after) - state.round
    if rounds > 0:
        strategy = RafloraStrategy(setup, state, discover_clients(grid, config.federation.num_clients), say)
        strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=timeout)
    return finish_run(setup, state, stop_after, say)


def build_server_app(config: Config, *, resume: bool = False, stop_after: int | None = None,
                     log: Callable[[str], None] | None = None) -> ServerApp:
    """A ServerApp for ``config`` (the folder already prepared by the caller)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, config, resume=resume, stop_after=stop_after, log=log)

    return app


def _config_from_run_config(run_config: dict) -> Config:
    try:
        text = run_config_toml(run_config)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    return config_from_dict(tomllib.loads(text))


# The entry point for `flwr run` / a SuperLink: run config keys `config` (a TOML path readable by
# the ServerApp's process) or `config-toml` (its text), `out` (overrides run.out when not empty)
# and the booleans `resume` and `overwrite` (examples/flower_app/pyproject.toml lists them).
app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    config = _config_from_run_config(dict(context.run_config))
    if str(context.run_config.get("out", "")):
        config.run.out = str(context.run_config["out"])
    config.run.runtime = "flower"  # what config.toml of the run folder records
    resume, overwrite = bool(context.run_config.get("resume", False)), bool(context.run_config.get("overwrite", False))
    try:
        prepare_folder(config, Path(config.out), resume, overwrite)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    serve(grid, config, resume=resume, log=print)
