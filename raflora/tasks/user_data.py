"""Text classification on the user's own CSV / TSV / JSONL / JSON file with a local encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from raflora.tasks.base import TaskData
from raflora.tasks.common import split_indices, subsample
from raflora.tasks.records import name_column, read_records, text_column
from raflora.tasks.text import MINILM, TextClassificationTask


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
    are integers) over the labels of the train file, or in the order of ``labels`` when the config
    declares them (a Flower node with its own file numbers classes as the federation does); a label
    outside that set is refused. Without ``test_file`` a seeded ``test_size`` share of the train file is
    held out. A problem in a file (a short row, a blank text, a NaN label, bytes that are not
    UTF-8, ...) is a ValueError naming the file and the line (see :mod:`raflora.tasks.records`).

    Options (constructor keyword arguments):
        train_file: str (required) -- path of the training data.
        test_file: str|None = None -- path of the test data (same columns).
        text_column: str = "text", label_column: str = "label" -- column names.
        key_column: str|None = None -- a natural grouping per row (user, site, ...) for by-key
                                        partitioning; ``train_keys`` is None without it.
        labels: list[str]|None = None -- the class names in index order; default: the train file's.
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
        labels: Sequence[str] | None = None,
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
        self.labels = [str(name) for name in labels] if labels is not None else None
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"task option labels must name at least two distinct classes, got {self.labels}")
        self.test_size = test_size
        self.train_size = train_size
        self._tables: tuple[list[dict], list[dict] | None, list[str]] | None = None

    def _read(self) -> tuple[list[dict], list[dict] | None, list[str]]:
        """(train examples, test examples or None, label names), read once."""
        if self._tables is None:
            train = self._examples(self.train_file)
            test = self._examples(self.test_file) if self.test_file else None
            # The classes are the declared ones, else the train file's: a test label the model never
            # trained on would otherwise become a class of its own that no client can learn.
            names = self.labels or sorted_labels({ex["label_name"] for ex in train})
            if len(names) < 2:
                raise ValueError(
                    f"label column {self.label_column!r} of {str(self.train_file)!r} holds a single class {names}"
                )
            index = {name: i for i, name in enumerate(names)}
            if self.labels:
                for ex, path in [(ex, self.train_file) for ex in train] + [(ex, self.test_file) for ex in test or []]:
                    if ex["label_name"] not in index:
                        raise ValueError(f"label {ex['label_name']!r} in {ex['where']} of {str(path)!r} "
                                         f"is not one of the task's labels {names}")
            for ex in test or []:
                if ex["label_name"] not in index:
                    raise ValueError(
                        f"label {ex['label_name']!r} in {ex['where']} of {str(self.test_file)!r} never occurs in "
                        f"the train file {str(self.train_file)!r}, whose labels are {names}"
                    )
            for ex in train + (test or []):
                ex["label"] = index[ex["label_name"]]
            self._tables = (train, test, names)
        return self._tables

    def _examples(self, path: Path) -> list[dict]:
        rows = read_records(path)
        texts = text_column(rows, path, self.text_column)
        labels = name_column(rows, path, self.label_column, "label")
        keys = name_column(rows, path, self.key_column, "key") if self.key_column else [None] * len(rows)
        return [
            {"text": t, "label_name": y, "key": k, "where": where}
            for t, y, k, (where, _) in zip(texts, labels, keys, rows)
        ]

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
