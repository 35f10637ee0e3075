"""The Flower ServerApp: find which node plays which client (:mod:`.roster`), open the run folder,
run the rounds with :class:`RafloraStrategy`, write the adapter -- the embedded runner's steps
around Flower's loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from raflora.config import Config, ConfigError
from raflora.config_io import apply_overrides, config_from_dict, config_to_dict
from raflora.federation.setup import load_data
from raflora.folder_lock import hold_folder
from raflora.runtimes.flower.roster import OWNERS_FILE, NodesMissing, Roster, load_owners
from raflora.runtimes.flower.run_config import config_data, declared_nodes, min_nodes, node_auth
from raflora.runtimes.flower.strategy import RafloraStrategy
from raflora.runtimes.folder import finish_run, last_round, open_run, prepare_folder
from raflora.tasks import build_task


def label_names(config: Config) -> list[str] | None:
    """The federation's classes, for nodes that bring their own data file: the config's ``labels``
    or the server's own files' (None for tasks that read no file: every node builds the same data)."""
    options = config.task.options
    if "train_file" not in options:
        return None
    if options.get("labels"):
        return [str(name) for name in options["labels"]]
    return load_data(build_task(config.task.name, **options), config).info.get("label_names")


def declared_config(config: Config, ranks: Sequence[int]) -> Config:
    """The config of a federation whose nodes declared their ranks: one client per node, in the
    roster's order, with its rank (``config.toml`` of the run folder records them). The server's
    own data only serves its test split, so its training rows are dealt out plainly."""
    data = apply_overrides(
        config_to_dict(config),
        {
            "federation.num_clients": len(ranks),
            "federation.sample_count": min(config.federation.sample_count, len(ranks)),
            "ranks.policy": "explicit",
            "ranks.ranks": list(ranks),
            "partition.scheme": "iid",
            "partition.min_examples": 1,
        },
    )
    return config_from_dict(data)


def serve(
    grid: Grid,
    config: Config,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    nodes: int = 0,
    wait_s: float = 600.0,
    check_folder: Callable[[Config], None] | None = None,
    declared: bool = False,
    node_auth: bool = False,
) -> list[dict]:
    """The whole run on ``grid``, in a run folder that :func:`prepare_folder` has checked, or that
    ``check_folder`` checks once the nodes have declared themselves (a resumed declared run: its
    ``config.toml`` holds their ranks). ``declared``: the nodes declare their rank and data (else
    they give a partition id); ``nodes``: how many declared nodes round 1 waits for (0:
    ``federation.num_clients``), at most ``wait_s`` s; ``node_auth``: the SuperLink authenticates
    nodes, so a client id stays with the node that first declared it (:mod:`.roster`)."""
    say = log or (lambda line: None)
    # node ids mean something across runs only when they are registered keys (node authentication)
    owners = load_owners(config.out) if resume and node_auth else None
    roster = Roster(config, label_names(config), say, declared=declared, node_auth=node_auth, owners=owners)
    roster.wait(grid, nodes, wait_s)
    if roster.declared:
        config = declared_config(config, roster.ranks())
        roster.config, roster.run_ranks = config, set(roster.ranks())
    if check_folder is not None:
        check_folder(config)
    setup, state = open_run(config, resume, say)
    roster.keep_in(Path(config.out) / OWNERS_FILE)
    rounds = last_round(config, stop_after) - state.round
    if rounds > 0:
        strategy = RafloraStrategy(setup, state, roster, say)
        strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=config.federation.round_timeout)
    return finish_run(setup, state, stop_after, say)


def build_server_app(
    config: Config, *, resume: bool = False, stop_after: int | None = None, log: Callable[[str], None] | None = None
) -> ServerApp:
    """A ServerApp for ``config`` (the folder already prepared by the caller)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, config, resume=resume, stop_after=stop_after, log=log)

    return app


# The entry point for `flwr run` / a SuperLink: the run config (:mod:`.run_config`) names the raflora
# config (`config`, a TOML path readable by the ServerApp's process, or `config-toml`, its text) and
# may set the common keys; `out` overrides run.out when not empty, `resume` and `overwrite` are
# booleans, `min-nodes` the declared nodes round 1 waits for, `nodes` the kind of nodes ("declared" or
# "partition-id"), `node-auth` whether the SuperLink authenticates them (examples/flower_app/pyproject.toml).
app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    try:
        config = config_from_dict(config_data(run_config))
        if str(run_config.get("out", "")):
            config.run.out = str(run_config["out"])
        config.run.runtime = "flower"  # what config.toml of the run folder records
        resume, overwrite = bool(run_config.get("resume", False)), bool(run_config.get("overwrite", False))
        nodes, declared, auth = min_nodes(run_config), declared_nodes(run_config, config), node_auth(run_config)
        # one writer per run folder, as for an embedded run (a second flwr run or a resume of a
        # running deployment exits with one line naming the holder)
        with hold_folder(config.out, "flwr run (ServerApp)"):
            if not resume:
                prepare_folder(config, Path(config.out), resume, overwrite)
            # a resumed run is checked against its config.toml once the nodes have said their ranks
            check = (lambda final: prepare_folder(final, Path(final.out), True, False)) if resume else None
            serve(
                grid,
                config,
                resume=resume,
                log=print,
                nodes=nodes,
                check_folder=check,
                declared=declared,
                node_auth=auth,
            )
    except (ConfigError, NodesMissing) as err:
        raise SystemExit(f"error: {err}") from None
