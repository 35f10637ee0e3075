"""Text classification on the user's own data (a CSV / TSV / JSONL / JSON file, or anything
Hugging Face ``datasets`` reads) with a local encoder or one from the Hugging Face cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from raflora.tasks import hf_datasets
from raflora.tasks.base import TaskData
from raflora.tasks.common import split_indices, subsample
from raflora.tasks.records import Row, name_column, read_records, text_column
from raflora.tasks.text import MINILM, TextClassificationTask


def sorted_labels(values: set[str]) -> list[str]:
    """Label names in index order: numerically if every label is an integer, else alphabetically."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


class UserTextTask(TextClassificationTask):
    """Text classification on your own data and any encoder (a folder or a cached Hub id).

    Data: ``train_file`` (.csv, .tsv, .jsonl or .json) with a text column and a label column, or
    ``dataset`` (see :mod:`raflora.tasks.hf_datasets`): "csv" | "json" | "parquet" with
    ``train_file``/``test_file``, a saved dataset folder, or a Hub dataset id in the local cache,
    whose ``train_split`` is the training data and ``test_split`` (default: "test" when there is
    one) the test data.
    Labels may be strings or integers; they become indices in sorted order (numeric order when all
    are integers) over the labels of the train file, or in the order of ``labels`` when the config
    declares them (a Flower node with its own file numbers classes as the federation does); a label
    outside that set is refused. Without ``test_file`` a seeded ``test_size`` share of the train file is
    held out. A problem in a file (a short row, a blank text, a NaN label, bytes that are not
    UTF-8, ...) is a ValueError naming the file and the line (see :mod:`raflora.tasks.records`).

    Options (constructor keyword arguments):
        train_file: str|None -- path of the training data (required without dataset, and with a
                                 dataset that is a builder: csv, json, parquet).
        test_file: str|None = None -- path of the test data (same columns).
        dataset: str|None = None -- read through Hugging Face datasets instead (see above).
        train_split: str = "train", test_split: str|None = None -- the splits of a dataset.
        text_column: str = "text", label_column: str = "label" -- column names.
        key_column: str|None = None -- a natural grouping per row (user, site, ...) for by-key
                                        partitioning; ``train_keys`` is None without it.
        labels: list[str]|None = None -- the class names in index order; default: the train file's.
        test_size: int|float = 0.2 -- held-out share (a count, or a fraction if < 1) when no test_file.
        train_size: int|None = None -- subsample the training rows.
        seed: int = 0, max_length: int = 64 -- as in the text task.
        model: str = "minilm" -- a local encoder folder or a Hub id in the local Hugging Face cache
                                 (AutoModel + AutoTokenizer load it; nothing downloads), "minilm"
                                 (all-MiniLM-L6-v2) or "tiny" (for tests).
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
        dataset: str | None = None,
        train_split: str = "train",
        test_split: str | None = None,
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
        if dataset is not None and hf_datasets.needs_files(dataset) and not train_file:
            raise ValueError(f"task 'user_text' with dataset = {dataset!r} needs train_file (and optionally test_file)")
        if dataset is not None and not hf_datasets.needs_files(dataset) and (train_file or test_file):
            raise ValueError(
                f"dataset = {dataset!r} holds the data itself; remove train_file and test_file (or set "
                f"dataset to one of {', '.join(hf_datasets.BUILDERS)} to read them)"
            )
        if dataset is None and not train_file:
            raise ValueError(
                "task 'user_text' needs the option train_file (a .csv, .tsv, .jsonl or .json path) "
                "or dataset (csv, json, parquet, a saved dataset folder or a cached Hub id)"
            )
        super().__init__(
            seed=seed,
            model=model,
            max_length=max_length,
            target_modules=target_modules,
            tiny_hidden_size=tiny_hidden_size,
            tiny_layers=tiny_layers,
        )
        self.train_file = Path(train_file).expanduser() if train_file else None
        self.test_file = Path(test_file).expanduser() if test_file else None
        self.dataset = dataset
        self.train_split = train_split
        self.test_split = test_split
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
            (train_rows, train_name), test_table = self._sources()
            train = self._examples(train_rows, train_name)
            test = self._examples(*test_table) if test_table else None
            # The classes are the declared ones, else the train file's: a test label the model never
            # trained on would otherwise become a class of its own that no client can learn.
            names = self.labels or sorted_labels({ex["label_name"] for ex in train})
            if len(names) < 2:
                raise ValueError(f"label column {self.label_column!r} of {train_name!r} holds a single class {names}")
            index = {name: i for i, name in enumerate(names)}
            if self.labels:
                sources = [(train, train_name)] + ([(test, test_table[1])] if test else [])
                for examples, name in sources:
                    for ex in examples:
                        if ex["label_name"] not in index:
                            raise ValueError(
                                f"label {ex['label_name']!r} in {ex['where']} of {name!r} "
                                f"is not one of the task's labels {names}"
                            )
            for ex in test or []:
                if ex["label_name"] not in index:
                    raise ValueError(
                        f"label {ex['label_name']!r} in {ex['where']} of {test_table[1]!r} never occurs in "
                        f"the {self._train_kind()} {train_name!r}, whose labels are {names}"
                    )
            for ex in train + (test or []):
                ex["label"] = index[ex["label_name"]]
            self._tables = (train, test, names)
        return self._tables

    def _train_kind(self) -> str:
        return "train file" if self.dataset is None or hf_datasets.needs_files(self.dataset) else "training split"

    def _sources(self) -> tuple[tuple[list[Row], str], tuple[list[Row], str] | None]:
        """(rows, name) of the training data and of the test data (None: hold out test_size)."""
        if self.dataset is None:
            test = (read_records(self.test_file), str(self.test_file)) if self.test_file else None
            return (read_records(self.train_file), str(self.train_file)), test
        splits = hf_datasets.load_splits(self.dataset, self.train_file, self.test_file)
        test_split = self.test_split or ("test" if "test" in splits and self.train_split != "test" else None)

        def table(split: str) -> tuple[list[Row], str]:
            name = hf_datasets.source_name(self.dataset, split, self.train_file, self.test_file)
            return hf_datasets.split_rows(splits, split, self.dataset), name

        return table(self.train_split), table(test_split) if test_split else None

    def _examples(self, rows: list[Row], path: str) -> list[dict]:
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
            info={
                "label_names": names,
                "source": self.dataset if self.dataset and not self.train_file else str(self.train_file),
            },
        )
