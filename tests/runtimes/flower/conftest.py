"""Fixtures of the Flower tests that drive declared nodes in this process (:mod:`.local_grid`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raflora.config_io import config_from_dict
from raflora.runtimes.folder import prepare_folder

from .declared_data import split_reviews


def node(name: str, rank: int, files: dict[str, Path]) -> dict:
    return {"client-id": name, "rank": rank, "data-file": str(files[name])}


@pytest.fixture
def files(tmp_path):
    return split_reviews(tmp_path)


@pytest.fixture
def serve_declared(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from .local_grid import LocalGrid

    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)
    from raflora.runtimes.flower.client_app import app
    from raflora.runtimes.flower.server_app import serve

    def run(
        data: dict, node_configs: list[dict], tamper=None, nodes: int = 0, grid_hook=None, stop_after=None, **options
    ):
        config = config_from_dict(data)
        prepare_folder(config, Path(config.out), False, False)
        # the nodes' run config names no config file: each message carries the server's config
        grid = LocalGrid(app, 0, tamper, node_configs=node_configs, run_config={})
        if grid_hook is not None:
            grid_hook(grid)
        lines: list[str] = []
        metrics = serve(
            grid, config, log=lines.append, nodes=nodes, wait_s=2.0, stop_after=stop_after, declared=True, **options
        )
        return metrics, lines, grid

    return run
