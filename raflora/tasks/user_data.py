"""Text classification on the user's own CSV / TSV / JSONL / JSON file with a local encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from raflora.tasks.base import TaskData
from raflora.tasks.common import split_indices, subsample
from raflora.tasks.text import MINILM, TextClassificationTask

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv (header line first), .jsonl/.ndjson (one object per line) or .json
    (a list of objects) file, as dicts."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in CSV_DELIMITERS:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=CSV_DELIMITERS[suffix])
            if reader.fieldnames is None:
                raise ValueError(f"data file {str(path)!r} is empty (no header line)")
            return list(reader)
    if suffix in JSONL_SUFFIXES:
        rows = []
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{str(path)!r} line {number} is not valid JSON: {err.msg}") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{str(path)!r} line {number} is not a JSON object")
                rows.append(row)
        return rows
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{str(path)!r} must hold a JSON list of objects (or use .jsonl, one object per line)")
        return rows
    raise ValueError(f"data file {str(path)!r}: unsupported extension {suffix!r}; use .csv, .tsv, .jsonl or .json")


def column(rows: list[dict[str, Any]], path: Path, name: str, role: str) -> list[str]:
    """The values of column ``name`` as strings; errors name the file, the column and the row."""
    if not rows:
        raise ValueError(f"data file {str(path)!r} has no rows")
    present = sorted({key for row in rows for key in row if key is not None})
    values = []
    for number, row in enumerate(rows, start=1):
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if name not in present:
                raise ValueError(f"{role} column {name!r} not found in {str(path)!r}; its columns are {present}")
            raise ValueError(f"{role} column {name!r} is empty in row {number} of {str(path)!r}")
        values.append(value if isinstance(value, str) else str(value))
    return values


def sorted_labels(values: set[str]) -> list[str]:
    """Label names in index order: numerically if every label is an integer, else alphabetically."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


class UserTextTask(TextClassificationTask):
    """Text classification on your own data file and any local encoder folder.

    Data: ``train_file`` (.csv, .tsv, .jsonl or .json) with a text column and a label column.
    Labels may be strings or integers; they become indices in sorted order (numeric order when all
    are integers), over the labels of the train and test files together. Without ``test_file`` a
    seeded ``test_size`` share of the train file is held out.

    Options (constructor keyword arguments):
        train_file: str (required) -- path of the training data.
        test_file: str|None = None -- path of the test data (same columns).
        text_column: str = "text", label_column: str = "label" -- column names.
        key_column: str|None = None -- a natural grouping per row (user, site, ...) for by-key
                                        partitioning; ``train_keys`` is None without it.
        test_size: int|float = 0.2 -- held-out share (a count, or a fraction if < 1) when no test_file.
        train_size: int|None = None -- subsample the training rows.
        seed: int = 0, max_length: int = 64 -- as in the text task.
        model: str = "minilm" -- a local encoder folder (AutoModel + AutoTokenizer load it; nothing
                                 downloads), "minilm" (all-MiniLM-L6-v2) or "tiny" (for tests).
        target_modules: list[str] = ["query", "value"] -- LoRA targets; BERT-style names by
                                 default, e.g. ["q_lin", "v_lin"] for DistilBERT. Checked on load.
    """

    name = "user_text"

    def __init__(
        self,
        *,
        train_file: str | None = None,
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        key_column: str | None = None,
        test_size: int | float = 0.2,
        train_size: int | None = None,
        seed: int = 0,
        model: str = MINILM,
        max_length: int = 64,
        target_modules: Sequence[str] | None = None,
        tiny_hidden_size: int = 32,
        tiny_layers: int = 2,
    ):
        if not train_file:
            raise ValueError("task 'user_text' needs the option train_file (a .csv, .tsv, .jsonl or .json path)")
        super().__init__(
            seed=seed,
            model=model,
            max_length=max_length,
            target_modules=target_modules,
            tiny_hidden_size=tiny_hidden_size,
            tiny_layers=tiny_layers,
        )
        self.train_file = Path(train_file).expanduser()
        self.test_file = Path(test_file).expanduser() if test_file else None
        self.text_column = text_column
        self.label_column = label_column
        self.key_column = key_column
        self.test_size = test_size
        self.train_size = train_size
        self._tables: tuple[list[dict], list[dict] | None, list[str]] | None = None

    def _read(self) -> tuple[list[dict], list[dict] | None, list[str]]:
        """(train examples, test examples or None, label names), read once."""
        if self._tables is None:
            train = self._examples(self.train_file)
            test = self._examples(self.test_file) if self.test_file else None
            names = sorted_labels({ex["label_name"] for ex in train + (test or [])})
            if len(names) < 2:
                raise ValueError(
                    f"label column {self.label_column!r} of {str(self.train_file)!r} holds a single class {names}"
                )
            index = {name: i for i, name in enumerate(names)}
            for ex in train + (test or []):
                ex["label"] = index[ex["label_name"]]
            self._tables = (train, test, names)
        return self._tables

    def _examples(self, path: Path) -> list[dict]:
        rows = read_records(path)
        texts = column(rows, path, self.text_column, "text")
        labels = column(rows, path, self.label_column, "label")
        keys = column(rows, path, self.key_column, "key") if self.key_column else [None] * len(rows)
        return [{"text": t, "label_name": y, "key": k} for t, y, k in zip(texts, labels, keys)]

    def label_names(self) -> list[str]:
        return self._read()[2]

    def load_data(self) -> TaskData:
        train, test, names = self._read()
        if test is None:
            train_idx, test_idx = split_indices(len(train), self.test_size, self.seed)
            train, test = [train[i] for i in train_idx], [train[i] for i in test_idx]
        train = subsample(train, self.train_size, self.seed + 1)
        return TaskData(
            train=train,
            test=test,
            train_labels=[ex["label"] for ex in train],
            train_keys=[ex["key"] for ex in train] if self.key_column else None,
            info={"label_names": names, "source": str(self.train_file)},
        )
