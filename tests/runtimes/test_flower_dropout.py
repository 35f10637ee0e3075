"""Simulated dropout under Flower: the strategy never asks the dropped clients, lists them as
``dropped`` (not as refused replies) and gives the embedded runtime's numbers."""

from __future__ import annotations

from raflora.config_io import config_from_dict
from raflora.runtimes.embedded import run_federation

from .conftest import small_config, without_time
from .test_flower import flower_in_process  # noqa: F401 (the fixture)


def test_dropout_under_flower_equals_embedded(tmp_path, flower_in_process):  # noqa: F811
    sections = {"run": {"rounds": 3}, "federation": {"dropout": 0.5}}
    asked = []

    def tamper(client, msg, reply):
        asked.append((int(msg.metadata.group_id), client))
        return reply

    flower = flower_in_process(config_from_dict(small_config(tmp_path / "flower", **sections)), tamper)
    embedded = run_federation(config_from_dict(small_config(tmp_path / "embedded", **sections)))
    assert without_time(flower) == without_time(embedded)
    for m in flower:
        assert len(m["dropped"]) == 2 and m["accepted"] == 2 and m["rejected"] == []
        assert sorted(c for r, c in asked if r == m["round"]) == sorted(set(m["clients"]) - set(m["dropped"]))
