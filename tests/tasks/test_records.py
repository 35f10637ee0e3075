"""Reading the user's data file: where each row sits, and which cells are names."""

from __future__ import annotations

import pytest

from raflora.tasks.records import name_column, read_records, text_column


def test_a_row_is_named_by_the_line_it_starts_on(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\r\nlines",1\r\n\r\nthird,2\r\n')
    rows = read_records(path)
    assert [where for where, _ in rows] == ["line 2", "line 5"]
    assert text_column(rows, path, "text") == ["two\r\nlines", "third"]
    path.write_text('text,label\n"two\nlines",1,extra\n')
    with pytest.raises(ValueError, match="line 2 of .* has 3 fields where the header has 2"):
        read_records(path)


def test_integer_valued_labels_are_one_name(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 5}\n\n{"text": "b", "label": 5.0}\n{"text": "c", "label": "5"}\n')
    rows = read_records(path)
    assert [where for where, _ in rows] == ["line 1", "line 3", "line 4"]
    assert name_column(rows, path, "label", "label") == ["5", "5", "5"]
    path.write_text('{"text": "a", "label": 0.5}\n')
    with pytest.raises(ValueError, match="line 1 of .* holds 0.5; a label must be a string or an integer"):
        name_column(read_records(path), path, "label", "label")
