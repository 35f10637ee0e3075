"""The user's data file as rows, each with where it sits in the file, and the checks of its cells.

Every problem is a ``ValueError`` of one line that names the file and the line (or the item of a
``.json`` list), so that a run reports it as a config problem (exit 2) while it is set up, before
the first round, instead of training on garbage: a JSON ``NaN`` label would otherwise become a
class named ``'nan'`` and a short CSV row a text of ``None``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}

Row = tuple[str, dict[str, Any]]  # ("line 7" or "item 3", the row's fields)


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark dropped)."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read data file {str(path)!r}: {err.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"line {line} of {str(path)!r} is not UTF-8 text (byte {raw[err.start]:#04x}); save the file as UTF-8"
        ) from None


def read_records(path: Path) -> list[Row]:
    """Rows of a .csv/.tsv (header line first), .jsonl/.ndjson (one object per line) or .json
    (a list of objects) file."""
    suffix = path.suffix.lower()
    if suffix not in CSV_DELIMITERS and suffix not in JSONL_SUFFIXES and suffix != ".json":
        raise ValueError(f"data file {str(path)!r}: unsupported extension {suffix!r}; use .csv, .tsv, .jsonl or .json")
    text = read_text(path)
    if suffix in CSV_DELIMITERS:
        return _csv_rows(path, text, CSV_DELIMITERS[suffix])
    if suffix in JSONL_SUFFIXES:
        return _jsonl_rows(path, text)
    return _json_rows(path, text)


def _csv_rows(path: Path, text: str, delimiter: str) -> list[Row]:
    # csv.reader rather than DictReader: DictReader fills a short row with None and hides a long
    # row's extra fields under the key None, and neither says which line it was.
    # A quoted field may span lines; a row is named by the line it starts on.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[Row] = []
    last = 0  # the last line of the previous row
    try:
        header = next(reader, None)
        if header is None or not any(name.strip() for name in header):
            raise ValueError(f"data file {str(path)!r} is empty (no header line)")
        last = reader.line_num
        for fields in reader:
            start, last = last + 1, reader.line_num
            if not fields:  # a blank line, skipped as DictReader does
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"line {start} of {str(path)!r} has {len(fields)} fields where the header has {len(header)}"
                )
            rows.append((f"line {start}", dict(zip(header, fields))))
    except csv.Error as err:  # e.g. a field over csv.field_size_limit() (131,072 characters)
        raise ValueError(f"line {last + 1} of {str(path)!r} cannot be read as CSV: {err}") from None
    return rows


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    # split on "\n" only: str.splitlines() would also split inside a string holding U+2028
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"line {number} of {str(path)!r} is not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {number} of {str(path)!r} is not a JSON object")
        rows.append((f"line {number}", row))
    return rows


def _json_rows(path: Path, text: str) -> list[Row]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"line {err.lineno} of {str(path)!r} is not valid JSON: {err.msg}") from None
    if not isinstance(items, list):
        raise ValueError(
            f"{str(path)!r} must hold a JSON list of objects, not a {type(items).__name__} "
            "(or use .jsonl, one object per line)"
        )
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ValueError(f"item {number} of {str(path)!r} is not a JSON object")
    return [(f"item {number}", item) for number, item in enumerate(items, start=1)]


def text_column(rows: list[Row], path: Path, name: str) -> list[str]:
    """The non-blank strings of column ``name``; a number or NaN in a JSON file is refused."""
    _require_column(rows, path, name, "text")
    values = []
    for where, row in rows:
        value = row.get(name)
        if value is None or isinstance(value, str) and not value.strip():
            raise ValueError(f"text column {name!r} is empty in {where} of {str(path)!r}")
        if not isinstance(value, str):
            raise ValueError(f"text column {name!r} in {where} of {str(path)!r} holds {value!r}, not a string")
        values.append(value)
    return values


def name_column(rows: list[Row], path: Path, name: str, role: str) -> list[str]:
    """Column ``name`` as names (labels, keys): strings, or integers written as their digits
    (``5`` and ``5.0`` are both ``"5"``); NaN, objects and lists are refused."""
    _require_column(rows, path, name, role)
    values = []
    for where, row in rows:
        value = row.get(name)
        if value is None or isinstance(value, str) and not value.strip():
            raise ValueError(f"{role} column {name!r} is empty in {where} of {str(path)!r}")
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, (str, int)):
            raise ValueError(
                f"{role} column {name!r} in {where} of {str(path)!r} holds {value!r}; a {role} must be a string or an integer"
            )
        values.append(str(value))
    return values


def _require_column(rows: list[Row], path: Path, name: str, role: str) -> None:
    if not rows:
        raise ValueError(f"data file {str(path)!r} has no rows")
    present = sorted({key for _, row in rows for key in row})
    if name not in present:
        raise ValueError(f"{role} column {name!r} not found in {str(path)!r}; its columns are {present}")
