"""Reading the rows of a user's data file (JSON lines, a JSON array, or CSV with a header)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from nograd.tasks._errors import DatasetError

JSON_SUFFIXES = (".jsonl", ".json")
CSV_SUFFIXES = (".csv",)
#: Deepest nesting of a JSON value in a data file (a row object is depth 1); deeper: a DatasetError.
MAX_JSON_DEPTH = 32
OPTIONS = {"text_field": "--text-field", "text2_field": "--text2-field", "label_field": "--label-field"}


def read_rows(path: Path, needed: dict[str, str], max_depth: int = MAX_JSON_DEPTH) -> list[tuple[str, dict]]:
    """Reads a JSONL/JSON/CSV data file into (position, row) pairs.

    Args:
        path: The file.
        needed: Option name (e.g. "text_field") -> field name, for CSV header checks.
        max_depth: Deepest JSON nesting allowed (the file's array counts as one level).

    Returns:
        Pairs whose position reads like "row 3" (for error messages) and whose row is a dict.

    Raises:
        DatasetError: if the file is missing, of an unsupported type, not UTF-8 or malformed.
    """
    if not path.is_file():
        raise DatasetError(f"data file {path} not found; check the path")
    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES + CSV_SUFFIXES:
        raise DatasetError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use JSON "
            "lines (.jsonl) or CSV with a header row (.csv)"
        )
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
        ) from None
    if suffix in CSV_SUFFIXES:
        return _csv_rows(path, content, needed)
    if content.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            items = _loads(content, path, "the file", max_depth + 1)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                "fix the syntax or write one JSON object per line"
            ) from None
        rows = [(f"row {n}", item) for n, item in enumerate(items, 1)]
    else:
        rows = []
        for n, line in enumerate(content.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"row {n}", _loads(line, path, f"row {n}", max_depth)))
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}, row {n}: malformed JSON ({exc.msg}); each line "
                    'must be one JSON object like {"text": "...", "label": '
                    '"..."}'
                ) from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise DatasetError(
                f"{path}, {where}: is a JSON {type(row).__name__}, not an "
                'object; write each row as {"text": "...", "label": "..."}'
            )
    return rows


def _loads(text: str, path: Path, where: str, max_depth: int):
    """`json.loads`, refusing values nested deeper than `max_depth` (the decoder recurses: a nesting bomb would
    otherwise end in a RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        depth = max_depth + 1
    else:
        depth = _depth(value)
    if depth > max_depth:
        raise DatasetError(
            f"{path}, {where}: JSON nested deeper than {max_depth} levels; rows are flat objects like "
            '{"text": "...", "label": "..."}'
        )
    return value


def _depth(value) -> int:
    """Nesting depth of a decoded JSON value (iterative: the value may be ~1000 levels deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _csv_rows(path: Path, content: str, needed: dict[str, str]) -> list[tuple[str, dict]]:
    """Parses CSV ``content`` (header row first) into (position, row) pairs."""
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        header = reader.fieldnames
        if header is None:
            raise DatasetError(f"{path} has no data rows; add a header row and data rows")
        absent = [(option, key) for option, key in needed.items() if key not in header]
        if absent:
            option, key = absent[0]
            raise DatasetError(
                f"{path}: no column {key!r} in the header (columns: "
                f"{', '.join(map(repr, header))}); rename the column or pass "
                f"the right name with {OPTIONS[option]} ({option}= in Python)"
            )
        rows = []
        for n, row in enumerate(reader, 1):
            where = f"row {n} (line {reader.line_num})"
            if None in row:
                raise DatasetError(
                    f'{path}, {where}: more values than header columns; quote fields that contain commas ("like, this")'
                )
            rows.append((where, row))
    except csv.Error as exc:
        raise DatasetError(
            f"{path}, line {reader.line_num}: malformed CSV ({exc}); fix the quoting on that line"
        ) from None
    return rows
