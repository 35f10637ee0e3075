"""docs/usage.md's config reference is the one the code generates from its fields' help."""

from __future__ import annotations

import tomllib
from pathlib import Path

from raflora.config_doc import BEGIN, END, config_reference, with_reference
from raflora.config_io import config_from_dict

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def test_usage_md_holds_the_generated_reference():
    text = USAGE.read_text(encoding="utf-8")
    assert with_reference(text) == text, "docs/usage.md is stale: run python scripts/config_reference.py"


def test_the_reference_is_a_valid_config_of_defaults():
    block = config_reference().removeprefix("```toml\n").removesuffix("```")
    data = tomllib.loads(block)
    assert data["federation"]["method"] == {"name": "raflora"}
    config = config_from_dict(data)
    assert config.federation.method.name == "raflora" and config.run.rounds == 3


def test_markers_are_required():
    try:
        with_reference("no markers here")
    except ValueError as err:
        assert BEGIN in str(err)
    else:
        raise AssertionError("a doc without markers must be refused")
    assert END in with_reference(f"a\n{BEGIN}\nold\n{END}\nb")
