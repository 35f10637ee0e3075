"""Every bad config and data file of issue 11: ``raflora run`` prints one line ``error: ...`` that
names the file, the line or the key, exits with code 2, and leaves no trace of a run behind."""

from __future__ import annotations

import json
import math
import pathlib
import re
from dataclasses import dataclass, field

import pytest

from raflora.cli import main

# 20 reviews by 4 users, two classes: the good data that each case spoils in one place
ROWS = [
    {"text": f"{word} review number {i}", "label": label, "user": f"u{i % 4}"}
    for i, (word, label) in enumerate([("great", "pos"), ("awful", "neg")] * 10)
]

BASE = {
    "run": {"name": "bad", "rounds": 1, "threads": 1},
    "federation": {"num_clients": 2},
    "ranks": {"policy": "cycle", "ranks": [2, 4], "r_max": 4},
    "train": {"local_steps": 1, "batch_size": 4},
    "partition": {"scheme": "iid"},
    "task": {"name": "user_text", "model": "tiny", "train_file": "train.csv", "key_column": "user", "test_size": 0.25},
}


def csv_text(rows=ROWS, header="text,label,user") -> str:
    return header + "\n" + "".join(f"{r['text']},{r['label']},{r['user']}\n" for r in rows)


def jsonl_text(rows=ROWS) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@dataclass
class Case:
    files: dict[str, str | bytes]  # file name in tmp_path -> contents
    expect: str  # regex that the error line must match
    config: dict = field(default_factory=dict)  # "section.key" -> value written into the config
    sets: list[str] = field(default_factory=list)  # --set overrides
    config_text: str | None = None  # the config file verbatim instead of BASE + config
    config_name: str = "c.toml"  # "." gives the folder itself as the config
    unreadable: bool = False  # reading the config raises PermissionError
    flower: bool = False  # needs the flower extra


CASES = {
    # --- data files of the user_text task ---------------------------------------------------
    "empty_csv": Case({"train.csv": ""}, r"train\.csv' is empty"),
    "header_only": Case({"train.csv": "text,label,user\n"}, r"train\.csv' has no rows"),
    "missing_label_column": Case(
        {"train.csv": csv_text(header="text,stars,user")}, r"label column 'label' not found in '.*train\.csv'"
    ),
    "missing_text_column": Case(
        {"train.csv": csv_text(header="body,label,user")}, r"text column 'text' not found in '.*train\.csv'"
    ),
    "one_label": Case(
        {"train.csv": csv_text([dict(r, label="pos") for r in ROWS])},
        r"label column 'label' of '.*train\.csv' holds a single class",
    ),
    "empty_text_cell": Case(
        {"train.csv": csv_text(ROWS[:2] + [dict(ROWS[2], text=" ")] + ROWS[3:])},
        r"text column 'text' is empty in line 4 of '.*train\.csv'",
    ),
    "null_text_cell": Case(
        {"train.jsonl": jsonl_text(ROWS[:2] + [dict(ROWS[2], text=None)] + ROWS[3:])},
        r"text column 'text' is empty in line 3 of '.*train\.jsonl'",
        config={"task.train_file": "train.jsonl"},
    ),
    "short_row": Case(
        {"train.csv": csv_text().replace("u1\n", "\n", 1).replace(",\n", "\n", 1)},
        r"line 3 of '.*train\.csv' has 2 fields where the header has 3",
    ),
    "fewer_keys_than_clients": Case(
        {"train.csv": csv_text()},
        r"num_clients = 5.*4 keys for 5 clients.*train\.csv",
        config={"federation.num_clients": 5, "partition.scheme": "by_key"},
    ),
    "malformed_jsonl_line": Case(
        {"train.jsonl": jsonl_text(ROWS[:1]) + "{not json}\n" + jsonl_text(ROWS[1:])},
        r"line 2 of '.*train\.jsonl' is not valid JSON",
        config={"task.train_file": "train.jsonl"},
    ),
    "json_not_a_list": Case(
        {"train.json": json.dumps({"rows": ROWS})},
        r"'.*train\.json' must hold a JSON list of objects, not a dict",
        config={"task.train_file": "train.json"},
    ),
    "non_utf8_bytes": Case(
        {"train.csv": csv_text().encode().replace(b"review number 1,", b"r\xe9view 1,")},
        r"line 3 of '.*train\.csv' is not UTF-8 text \(byte 0xe9\)",
    ),
    "field_over_csv_limit": Case(
        {"train.csv": csv_text(ROWS[:1] + [dict(ROWS[1], text="x" * 131_073)] + ROWS[2:])},
        r"line 3 of '.*train\.csv' cannot be read as CSV: field larger than field limit",
    ),
    "test_label_unseen_in_training": Case(
        {"train.csv": csv_text(), "test.csv": csv_text(ROWS[:1] + [dict(ROWS[1], label="meh")])},
        r"label 'meh' in line 3 of '.*test\.csv' never occurs in the train file '.*train\.csv'",
        config={"task.test_file": "test.csv"},
    ),
    "nan_label": Case(
        {"train.jsonl": jsonl_text(ROWS[:1] + [dict(ROWS[1], label=math.nan)] + ROWS[2:])},
        r"label column 'label' in line 2 of '.*train\.jsonl' holds nan",
        config={"task.train_file": "train.jsonl"},
    ),
    "object_label": Case(
        {"train.jsonl": jsonl_text(ROWS[:4] + [dict(ROWS[4], label={"x": 1})] + ROWS[5:])},
        r"label column 'label' in line 5 of '.*train\.jsonl' holds \{'x': 1\}",
        config={"task.train_file": "train.jsonl"},
    ),
    "nan_text": Case(
        {"train.jsonl": jsonl_text(ROWS[:1] + [dict(ROWS[1], text=math.nan)] + ROWS[2:])},
        r"text column 'text' in line 2 of '.*train\.jsonl' holds nan, not a string",
        config={"task.train_file": "train.jsonl"},
    ),
    # --- the config file and its values ------------------------------------------------------
    "config_not_utf8": Case(
        {"train.csv": csv_text()},
        r"c\.toml: line 1 is not UTF-8 text",
        config_text="# r\xe9sum\xe9\n".encode("latin-1"),
    ),
    "config_unreadable": Case(
        {"train.csv": csv_text()}, r"cannot read config file '.*c\.toml': Permission denied", unreadable=True
    ),
    "scalar_where_a_section_belongs": Case(
        {},
        r"\[run\] must be a table, got run = 5; cannot set run\.rounds",
        config_text="run = 5\n",
        sets=["run.rounds=2"],
    ),
    "config_is_a_folder": Case({}, r"config file '.*' is a folder", config_name="."),
    "more_clients_than_examples": Case(
        {},
        r"federation\.num_clients = 500, partition\.scheme = 'dirichlet': cannot give 500 clients",
        config={
            "task": {"name": "synthetic", "train_size": 800, "test_size": 50},
            "federation.num_clients": 500,
            "partition.scheme": "dirichlet",
            "ranks.ranks": [2],
        },
    ),
    "hub_model_offline": Case(
        {"train.csv": csv_text()},
        r"task\.model = 'prajjwal1/bert-tiny': the model cannot be loaded",
        config={"task.model": "prajjwal1/bert-tiny"},
    ),
    "learning_rate_1e300": Case(
        {"train.csv": csv_text()},
        r"train\.lr = 1e\+300 is out of range; it must be at most 10",
        sets=["train.lr=1e300"],
    ),
    "learning_rate_of_401_digits": Case(
        {"train.csv": csv_text()}, r"train\.lr must be a finite number", sets=["train.lr=1" + "0" * 400]
    ),
    "bad_data_under_flower": Case(
        {"train.csv": "text,label,user\n"}, r"train\.csv' has no rows", sets=["run.runtime=flower"], flower=True
    ),
    "a_billion_clients": Case(
        {"train.csv": csv_text()},
        r"federation\.num_clients = 1000000000 is out of range",
        sets=["federation.num_clients=1000000000"],
    ),
}


def config_toml(tmp_path: pathlib.Path, changes: dict) -> str:
    data = {name: dict(values) for name, values in BASE.items()}
    for key, value in changes.items():
        if "." in key:
            section, name = key.split(".")
            data[section][name] = value
        else:
            data[key] = value  # a whole section replaced
    data["task"] = {k: str(tmp_path / v) if k.endswith("_file") else v for k, v in data["task"].items()}
    data["run"]["out"] = str(tmp_path / "run")
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) for name, values in data.items()
    )


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_and_exit_2(case: Case, tmp_path, capsys, monkeypatch):
    if case.flower:
        pytest.importorskip("flwr")
    for name, contents in case.files.items():
        target = tmp_path / name
        target.write_bytes(contents) if isinstance(contents, bytes) else target.write_text(contents)
    config = tmp_path / case.config_name
    if case.config_name != ".":
        text = case.config_text if case.config_text is not None else config_toml(tmp_path, case.config)
        config.write_bytes(text) if isinstance(text, bytes) else config.write_text(text)
    if case.unreadable:  # chmod does not stop root, who runs these tests in CI containers
        read_bytes = pathlib.Path.read_bytes

        def refuse(path):
            if path == config:
                raise PermissionError(13, "Permission denied", str(path))
            return read_bytes(path)

        monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    sets = [arg for s in case.sets for arg in ("--set", s)]
    code = main(["run", str(config), "--quiet", *sets])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.expect, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
