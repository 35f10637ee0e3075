"""``raflora schema``: the config's JSON Schema, which every shipped config satisfies and which refuses
a key no model has (an editor that reads it completes and checks TOML keys)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from raflora.cli import main
from raflora.config import ConfigError, config_schema
from raflora.config_io import config_from_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


@pytest.fixture(scope="module")
def schema():
    return config_schema()


def test_the_command_prints_the_schema(capsys, schema):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == schema
    jsonschema.Draft202012Validator.check_schema(printed)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_config_satisfies_it(schema, path):
    jsonschema.validate(tomllib.loads(path.read_text()), schema)


@pytest.mark.parametrize(
    "data",
    [
        {"run": {"roundz": 3}},
        {"colours": {}},
        {"federation": {"empty_partition": "keep"}},
        {"federation": {"method": {"name": "carryover", "empty_partition": "keep"}}},
        {"federation": {"method": "fedavg"}},
        {"train": {"lr": 11.0}},
        {"task": {"name": "synthetic", "bogus": 1}},
    ],
)
def test_it_refuses_what_the_reader_refuses(schema, data):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
    with pytest.raises(ConfigError):
        config_from_dict(data)
