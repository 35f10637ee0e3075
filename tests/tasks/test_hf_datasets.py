"""task.dataset: user data through Hugging Face datasets (csv/json/parquet files, a saved
dataset folder, a Hub dataset in a local cache), with the same columns and checks as a file."""

from __future__ import annotations

import csv
import json

import pytest

datasets = pytest.importorskip("datasets")  # the [datasets] extra; the lock file installs it

from raflora.tasks import UserTextTask  # noqa: E402

ROWS = [
    {"review": f"{word} product number {i}", "stars": star, "user": f"u{i % 3}"}
    for i, (word, star) in enumerate([("great", "5"), ("awful", "1"), ("fine", "10"), ("great", "5"), ("bad", "1")] * 4)
]


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def arrow_dataset(folder, splits: dict, class_labels: list[str] | None = None):
    """``splits`` (name -> rows) saved with ``save_to_disk``, the label column a ClassLabel when
    ``class_labels`` are given. Built from parquet files: ``Dataset.from_list`` fails in this
    environment while fingerprinting (dill cannot pickle pyarrow's MonthDayNano)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for name, rows in splits.items():
        files[name] = str(folder.parent / f"{folder.name}-{name}.parquet")
        pq.write_table(pa.Table.from_pylist(rows), files[name])
    loaded = datasets.load_dataset("parquet", data_files=files)
    if class_labels:
        loaded = loaded.cast_column("stars", datasets.ClassLabel(names=class_labels))
    if list(splits) == ["train"]:
        loaded = loaded["train"]  # a single Dataset, not a DatasetDict
    loaded.save_to_disk(str(folder))
    return folder


def options(**extra):
    return {"text_column": "review", "label_column": "stars", "model": "tiny", "seed": 1, **extra}


def reference(tmp_path):
    """The same rows read by raflora's own CSV reader: what every dataset form must give."""
    return UserTextTask(
        train_file=str(write_csv(tmp_path / "ref.csv", ROWS)), key_column="user", **options()
    ).load_data()


def texts_labels(data):
    return [(ex["text"], ex["label"], ex["key"]) for ex in data.train], [(ex["text"], ex["label"]) for ex in data.test]


def test_csv_json_and_parquet_builders_read_what_the_file_reader_reads(tmp_path):
    ref = reference(tmp_path)
    csv_file = write_csv(tmp_path / "train.csv", ROWS)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), str(parquet))
    for builder, path in (("csv", csv_file), ("json", jsonl), ("parquet", parquet)):
        data = UserTextTask(dataset=builder, train_file=str(path), key_column="user", **options()).load_data()
        assert data.info["label_names"] == ["1", "5", "10"], builder  # csv infers integers: same names
        assert texts_labels(data) == texts_labels(ref), builder
        assert data.train_labels == ref.train_labels and data.train_keys == ref.train_keys


def test_a_saved_dataset_folder_with_its_test_split_and_class_labels(tmp_path):
    names = ["bad", "good"]
    train = [{"review": f"text {i}", "stars": i % 2} for i in range(12)]
    test = [{"review": f"held {i}", "stars": (i + 1) % 2} for i in range(4)]
    folder = arrow_dataset(tmp_path / "saved", {"train": train, "test": test}, names)
    data = UserTextTask(dataset=str(folder), **options()).load_data()
    assert data.info["label_names"] == names  # the ClassLabel's names, not 0 and 1
    assert [ex["text"] for ex in data.test] == [row["review"] for row in test]  # the test split, as given
    assert [ex["label"] for ex in data.test] == [row["stars"] for row in test]
    assert sorted(ex["text"] for ex in data.train) == sorted(row["review"] for row in train)
    # a single Dataset is the training data; test_size holds some out
    one = arrow_dataset(tmp_path / "one", {"train": train}, names)
    data = UserTextTask(dataset=str(one), test_size=3, **options()).load_data()
    assert len(data.train) == 9 and len(data.test) == 3


def test_a_hub_dataset_in_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "datasets--raflora-test--reviews"
    snapshot = repo / "snapshots" / "f00d"
    (snapshot / "data").mkdir(parents=True)
    write_csv(snapshot / "data" / "train.csv", ROWS[:16])
    write_csv(snapshot / "data" / "test.csv", ROWS[16:])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("f00d")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    data = UserTextTask(dataset="raflora-test/reviews", **options()).load_data()
    assert [ex["text"] for ex in data.test] == [row["review"] for row in ROWS[16:]]
    assert len(data.train) == 16 and data.info["source"] == "raflora-test/reviews"
    with pytest.raises(FileNotFoundError, match="'raflora-test/absent' is neither a local folder nor a dataset"):
        UserTextTask(dataset="raflora-test/absent", **options()).load_data()


def test_problems_name_the_dataset_split_and_row(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[6]["review"] = None
    arrow_dataset(tmp_path / "holes", {"train": rows})
    with pytest.raises(ValueError, match=r"text column 'review' is empty in row 7 of '.*holes\[train\]'"):
        UserTextTask(dataset=str(tmp_path / "holes"), **options()).load_data()
    with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['train'\]"):
        UserTextTask(dataset=str(tmp_path / "holes"), train_split="validation", **options()).load_data()
    arrow_dataset(tmp_path / "whole", {"train": ROWS})
    with pytest.raises(
        ValueError,
        match=r"label column 'score' not found in '.*whole\[train\]'; its columns are "
        r"\['review', 'stars', 'user'\]",
    ):
        UserTextTask(dataset=str(tmp_path / "whole"), **options(label_column="score")).load_data()


def test_dataset_options_are_checked_when_the_task_is_built(tmp_path):
    with pytest.raises(ValueError, match="dataset = 'csv' needs train_file"):
        UserTextTask(dataset="csv", **options())
    with pytest.raises(ValueError, match="holds the data itself; remove train_file"):
        UserTextTask(dataset="org/name", train_file="x.csv", **options())
    with pytest.raises(ValueError, match="or dataset"):
        UserTextTask(**options())
