"""Text classification on user CSV / JSONL files: parsing, label indexing, splits and errors."""

from __future__ import annotations

import csv
import json

import pytest

from raflora.tasks import UserTextTask, build_task

ROWS = [
    {"review": f"{word} product number {i}", "stars": star, "user": f"u{i % 3}"}
    for i, (word, star) in enumerate([("great", "5"), ("awful", "1"), ("fine", "10"), ("great", "5"), ("bad", "1")] * 4)
]


def write_csv(path, rows, delimiter=","):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def options(path, **extra):
    return {"train_file": str(path), "text_column": "review", "label_column": "stars", "model": "tiny", **extra}


def test_csv_labels_sorted_numerically_and_split_seeded(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ROWS)
    data = UserTextTask(**options(path, seed=1)).load_data()
    assert data.info["label_names"] == ["1", "5", "10"]  # numeric order, not "1" < "10" < "5"
    assert len(data.train) == 16 and len(data.test) == 4
    again = UserTextTask(**options(path, seed=1)).load_data()
    assert [ex["text"] for ex in again.test] == [ex["text"] for ex in data.test]
    ex = next(ex for ex in data.train + data.test if ex["text"].startswith("fine"))
    assert ex["label"] == 2
    assert data.train_keys is None


def test_jsonl_string_labels_key_column_and_test_file(tmp_path):
    rows = [dict(r, stars={"1": "neg", "5": "pos", "10": "pos"}[r["stars"]]) for r in ROWS]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:15])
    test = write_jsonl(tmp_path / "test.jsonl", rows[15:])
    task = UserTextTask(**options(train, test_file=str(test), key_column="user"))
    data = task.load_data()
    assert data.info["label_names"] == ["neg", "pos"]
    assert len(data.train) == 15 and len(data.test) == 5
    assert data.train_keys == [r["user"] for r in rows[:15]]
    assert data.train_labels == [0 if r["stars"] == "neg" else 1 for r in rows[:15]]


def test_integer_json_labels_and_tsv(tmp_path):
    rows = [dict(r, stars=int(r["stars"])) for r in ROWS]
    data = UserTextTask(**options(write_jsonl(tmp_path / "d.jsonl", rows), test_size=5)).load_data()
    assert data.info["label_names"] == ["1", "5", "10"] and len(data.test) == 5
    tsv = write_csv(tmp_path / "d.tsv", ROWS, delimiter="\t")
    assert len(UserTextTask(**options(tsv)).load_data().train) == 16


def test_user_task_trains_through_peft(tmp_path, peft_helpers):
    task = build_task("user_text", **options(write_csv(tmp_path / "r.csv", ROWS), max_length=16))
    data = task.load_data()
    model = peft_helpers.wrap(task, task.load_model())
    assert model.base_model.model.classifier.original_module.out_features == 3
    peft_helpers.check_backprop(task, model, data.train[:4])
    result = task.evaluate(model, data.test, batch_size=3)
    assert 0.0 <= result["accuracy"] <= 1.0
    first, last = peft_helpers.train_steps(task, model, data.train[:8])
    assert last < first


def test_errors_name_the_file_and_column(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        UserTextTask(**options(missing)).load_data()
    path = write_csv(tmp_path / "reviews.csv", ROWS)
    with pytest.raises(
        ValueError, match=r"label column 'score' not found in .*reviews.csv.*\['review', 'stars', 'user'\]"
    ):
        UserTextTask(**options(path, label_column="score")).load_data()
    with pytest.raises(ValueError, match=r"text column 'body' not found in .*reviews.csv"):
        UserTextTask(**options(path, text_column="body")).load_model()
    holes = write_jsonl(tmp_path / "holes.jsonl", ROWS[:2] + [{"review": "", "stars": "1"}])
    with pytest.raises(ValueError, match=r"text column 'review' is empty in line 3 of .*holes.jsonl"):
        UserTextTask(**options(holes)).load_data()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"review": "x", "stars": 1}\n{not json}\n')
    with pytest.raises(ValueError, match=r"line 2 of .*broken.jsonl.* is not valid JSON"):
        UserTextTask(**options(broken)).load_data()
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unsupported extension '.xlsx'"):
        UserTextTask(**options(tmp_path / "d.xlsx")).load_data()
    one = write_csv(tmp_path / "one.csv", [dict(r, stars="5") for r in ROWS])
    with pytest.raises(ValueError, match="single class"):
        UserTextTask(**options(one)).load_data()
    with pytest.raises(ValueError, match="needs the option train_file"):
        build_task("user_text")


def test_local_encoder_folder_and_bad_targets(tmp_path):
    from raflora.tasks.text import minilm_path

    path = write_csv(tmp_path / "r.csv", ROWS)
    task = UserTextTask(**options(path, model=str(tmp_path / "no-encoder")))
    with pytest.raises(FileNotFoundError, match="no-encoder"):
        task.load_model()
    # a real local folder is accepted as `model`; only the tokenizer is loaded here (fast)
    task = UserTextTask(**options(path, model=str(minilm_path()), max_length=8))
    assert task.collate(task.load_data().train[:2])["input_ids"].shape[1] <= 8


def test_wrong_target_names_list_the_linear_layers(tmp_path):
    task = UserTextTask(**options(write_csv(tmp_path / "r.csv", ROWS), target_modules=["q_lin"]))
    with pytest.raises(ValueError, match=r"target_modules \['q_lin'\] not found.*'query'"):
        task.load_model()


def test_declared_labels_fix_the_class_order_for_every_file(tmp_path):
    # a Flower node whose own file holds only some classes numbers them as the federation does
    only_low = write_csv(tmp_path / "low.csv", [r for r in ROWS if r["stars"] != "10"])
    declared = UserTextTask(**options(only_low, labels=[10, 5, 1])).load_data()
    assert declared.info["label_names"] == ["10", "5", "1"]
    assert {ex["label_name"]: ex["label"] for ex in declared.train + declared.test} == {"5": 1, "1": 2}
    assert UserTextTask(**options(only_low)).load_data().info["label_names"] == ["1", "5"]
    with pytest.raises(
        ValueError, match=r"label '1' in .* of '.*low.csv' is not one of the task's labels \['5', '10'\]"
    ):
        UserTextTask(**options(only_low, labels=["5", "10"])).load_data()
    with pytest.raises(ValueError, match="at least two distinct classes"):
        UserTextTask(**options(only_low, labels=["5", "5"]))
