"""The user's data through Hugging Face ``datasets`` (``task.dataset``), as rows for the same
column checks as a data file (:mod:`raflora.tasks.records`).

``dataset`` is one of:

* ``"csv"``, ``"json"`` or ``"parquet"``: ``datasets``' own reader of ``train_file`` (and
  ``test_file``); ``json`` reads JSON Lines and JSON lists;
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a folder of data
  files that ``load_dataset(folder)`` reads (``train.csv``, ``data/test-*.parquet``, ...);
* a Hub dataset id in the local Hugging Face cache (``hf download org/name --repo-type dataset``);
  nothing downloads.

A ``ClassLabel`` column gives its class names, not their indices. Rows are named ``row N`` of
``<dataset>[<split>]`` in error messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raflora.tasks.common import offline
from raflora.tasks.hub import cached_snapshot, looks_like_hub_id
from raflora.tasks.records import Row

BUILDERS = ("csv", "json", "parquet")
INSTALL = "task.dataset needs the datasets package: pip install 'raflora[datasets]'"


def needs_files(dataset: str) -> bool:
    """Whether ``dataset`` reads ``train_file``/``test_file`` (a builder name) or is the data itself."""
    return dataset in BUILDERS


def load_splits(dataset: str, train_file: str | None = None, test_file: str | None = None) -> dict[str, Any]:
    """The dataset's splits by name (``datasets.Dataset`` each)."""
    offline()  # before datasets is imported: it reads HF_HUB_OFFLINE once
    try:
        import datasets
    except ImportError:
        raise ImportError(INSTALL) from None
    datasets.disable_progress_bars()  # a few thousand rows load in well under a second
    if needs_files(dataset):
        files = {"train": str(train_file)}
        if test_file:
            files["test"] = str(test_file)
        return dict(datasets.load_dataset(dataset, data_files=files))
    path = Path(dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    elif looks_like_hub_id(dataset):
        loaded = datasets.load_dataset(str(cached_snapshot(dataset, repo_type="dataset")))
    else:
        raise FileNotFoundError(f"dataset {dataset!r} is not one of {', '.join(BUILDERS)}, a folder or a Hub id")
    return {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)


def split_rows(splits: dict[str, Any], split: str, dataset: str) -> list[Row]:
    """The rows of ``split`` with ClassLabel indices turned into their names."""
    if split not in splits:
        raise ValueError(f"dataset {dataset!r} has no split {split!r}; its splits are {sorted(splits)}")
    table = splits[split]
    from datasets import ClassLabel

    labels = {name: feature for name, feature in table.features.items() if isinstance(feature, ClassLabel)}
    rows = []
    for number, row in enumerate(table, start=1):
        for name, feature in labels.items():
            if row[name] is not None and row[name] >= 0:  # -1: a missing label, refused by the checks
                row[name] = feature.int2str(row[name])
        rows.append((f"row {number}", row))
    return rows


def source_name(dataset: str, split: str, train_file: str | None, test_file: str | None) -> str:
    """How messages name a split: the file for a builder, ``dataset[split]`` otherwise."""
    if needs_files(dataset):
        return str(train_file if split == "train" else test_file)
    return f"{dataset}[{split}]"
