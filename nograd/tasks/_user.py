"""Loading a user's own labelled data (JSONL or CSV) as a ``Task``.

Checks that need the tokenizer (two label words sharing a first token, texts longer than the
model's context) are done by the engine, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

from nograd.tasks._errors import DatasetError, TaskError
from nograd.tasks._example import Example, examples_hash
from nograd.tasks._files import MAX_JSON_DEPTH, OPTIONS, read_rows
from nograd.tasks._split import auto_test_fraction, check_test_fraction, hold_out, label_counts
from nograd.tasks._task import METRICS, Task
from nograd.tasks._template import validate_template


def parse_verbalizer(spec: str) -> dict[str, str]:
    """Parses a verbalizer written as ``"negative:bad,positive:great"`` (or a JSON object).

    Labels keep their order. A label may itself contain ':' (the word is after the last one);
    labels containing ',' need the JSON form.

    Raises:
        DatasetError: on an empty entry, a missing ':', an empty label or word, a repeated
            label, or two labels with the same word.
    """
    if not isinstance(spec, str):
        raise DatasetError(f"verbalizer must be a string like 'neg:bad,pos:good', got {spec!r}", field="verbalizer")
    text = spec.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"verbalizer {spec!r} is not valid JSON ({exc.msg}); write it as "
                "'label:word,label:word' or a JSON object",
                field="verbalizer",
            ) from None
        return check_verbalizer(parsed)
    out: dict[str, str] = {}
    for item in text.split(","):
        label, sep, word = (part.strip() for part in item.rpartition(":"))
        if not item.strip():
            raise DatasetError(
                f"verbalizer {spec!r} has an empty entry; write 'label:word,label:word' without stray commas",
                field="verbalizer",
            )
        if not sep or not label:
            raise DatasetError(
                f"verbalizer entry {item.strip()!r} in {spec!r} is not 'label:word'; write each entry as label:word",
                field="verbalizer",
            )
        if label in out:
            raise DatasetError(f"verbalizer {spec!r} gives label {label!r} twice; keep one", field="verbalizer")
        out[label] = word
    return check_verbalizer(out)


def check_verbalizer(verbalizer: object) -> dict[str, str]:
    """Checks a label -> word mapping and returns it as a plain dict.

    Raises:
        DatasetError: if it is not a non-empty mapping of strings to non-empty, distinct words.
    """
    if not isinstance(verbalizer, dict) or not verbalizer:
        raise DatasetError(
            f"verbalizer must be a non-empty mapping label -> word like "
            f"{{'neg': 'bad', 'pos': 'good'}}, got {verbalizer!r}",
            field="verbalizer",
        )
    seen: dict[str, str] = {}
    for label, word in verbalizer.items():
        if not isinstance(label, str) or not label.strip():
            raise DatasetError(f"verbalizer label {label!r} must be a non-empty string", field="verbalizer")
        if not isinstance(word, str) or not word.strip():
            raise DatasetError(
                f"verbalizer word for label {label!r} is empty; give it a word, e.g. {label}:good", field="verbalizer"
            )
        if word.strip() in seen:
            raise DatasetError(
                f"labels {seen[word.strip()]!r} and {label!r} both map to the word "
                f"{word.strip()!r}; give each label its own word",
                field="verbalizer",
            )
        seen[word.strip()] = label
    return dict(verbalizer)


def load_user_dataset(
    path: str | Path,
    *,
    template: str,
    verbalizer: dict[str, str] | str,
    text_field: str = "text",
    text2_field: str | None = None,
    label_field: str = "label",
    metric: str = "accuracy",
    name: str | None = None,
    test_path: str | Path | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    max_depth: int = MAX_JSON_DEPTH,
) -> Task:
    """Loads a JSONL (.jsonl/.json) or CSV (.csv) file as a ``Task``.

    Labels are read as strings (a CSV or JSON 0/1 becomes "0"/"1"); surrounding whitespace is
    dropped from labels. Label order is the verbalizer's order.

    Args:
        path: Data file; its rows form the pool (minus any held-out test rows).
        template: Prompt template, see ``validate_template``.
        verbalizer: Label -> word, as a dict or a string for ``parse_verbalizer``.
        text_field: Field (column) holding the text.
        text2_field: Field holding the second text of pair tasks, or None.
        label_field: Field holding the label.
        metric: "accuracy" or "macro_f1".
        name: Task name; defaults to the file's stem.
        test_path: Optional separate test file in the same format and fields.
        test_fraction: Without ``test_path``, the fraction of each label's rows (rounded
            down) held out as test, chosen with ``seed``; None: the automatic rule of
            ``nograd.tasks._split`` (20%, at most 1000 rows, when every label keeps 8 rows).
            The fraction used is the task's ``test_fraction``.
        seed: Seed of the held-out split (runs keep it at 0: every run on a file tests on the same rows).
        max_depth: Deepest JSON nesting a row may have.

    Raises:
        DatasetError: naming the file, row and field of the problem and how to fix it.
    """
    verbalizer = parse_verbalizer(verbalizer) if isinstance(verbalizer, str) else check_verbalizer(verbalizer)
    fields = ("text",) if text2_field is None else ("text", "text2")
    try:
        validate_template(template, fields)
    except TaskError as exc:
        raise DatasetError(f"invalid template: {exc}", field="template") from None
    if metric not in METRICS:
        raise DatasetError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", field="metric")
    if test_fraction is not None and not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction}", field="test_fraction")
    if test_path is not None and test_fraction:
        raise DatasetError(
            "give either a test file (test_path, --test-dataset) or test_fraction, not both", field="test_fraction"
        )
    keys = {"text": text_field, "text2": text2_field, "label": label_field}
    pool = _read_examples(Path(path), keys, verbalizer, require_all_labels=True, max_depth=max_depth)
    notes: list[str] = []
    if test_path is not None:
        test = _read_examples(Path(test_path), keys, verbalizer, require_all_labels=False, max_depth=max_depth)
        test_fraction = 0.0
    else:
        counts = label_counts(pool)
        if test_fraction is None:
            test_fraction, note = auto_test_fraction(counts)
        else:
            note = check_test_fraction(counts, test_fraction)
        notes += [note] if note else []
        pool, test = hold_out(pool, test_fraction, seed)
    try:
        return Task(
            name=name or Path(path).stem,
            labels=tuple(verbalizer),
            verbalizer=verbalizer,
            template=template,
            metric=metric,
            pool=tuple(pool),
            test=tuple(test),
            version=examples_hash(pool + test)[:16],
            fields=fields,
            test_fraction=test_fraction,
            notes=tuple(notes),
        )
    except TaskError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def _read_examples(
    path: Path,
    keys: dict[str, str | None],
    verbalizer: dict[str, str],
    require_all_labels: bool,
    max_depth: int = MAX_JSON_DEPTH,
) -> list[Example]:
    """Reads and checks one data file."""
    examples, first_seen = [], {}
    needed = {f"{slot}_field": key for slot, key in keys.items() if key is not None}
    for where, row in read_rows(path, needed, max_depth):
        values = {
            option[: -len("_field")]: _value(row, key, f"{path}, {where}", option) for option, key in needed.items()
        }
        examples.append(Example(**values))
        first_seen.setdefault(values["label"], where)
    if not examples:
        raise DatasetError(f"{path} has no data rows; add rows (one example each)")
    unknown = [lab for lab in first_seen if lab not in verbalizer]
    if unknown:
        listed = ", ".join(f"{lab!r} (first at {first_seen[lab]})" for lab in unknown)
        example = ",".join(f"{k}:{v}" for k, v in verbalizer.items())
        raise DatasetError(
            f"{path}: label(s) {listed} have no verbalizer word; add it to "
            f"--verbalizer, e.g. '{example},{unknown[0]}:WORD'",
            field="verbalizer",
        )
    missing = [lab for lab in verbalizer if lab not in first_seen]
    if require_all_labels and missing:
        raise DatasetError(
            f"{path}: unknown label(s) {', '.join(map(repr, missing))} in the "
            f"verbalizer never occur in the data (labels found: "
            f"{', '.join(map(repr, first_seen))}); remove them from the "
            "verbalizer or check the spelling",
            field="verbalizer",
        )
    return examples


def _value(row: dict, key: str, where: str, option: str) -> str:
    """Returns field ``key`` of ``row`` as a non-empty string."""
    value = row.get(key)
    if value is None:
        present = ", ".join(repr(k) for k in row if k is not None)
        raise DatasetError(
            f"{where}: missing field {key!r} (fields present: {present}); add "
            f"it to the row or set {option} ({OPTIONS[option]}) to the right "
            "field name"
        )
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise DatasetError(
            f"{where}: field {key!r} is a {type(value).__name__}, not a string; store it as a plain string"
        )
    if option == "label_field":
        value = value.strip()
    if not value.strip():
        raise DatasetError(f"{where}: field {key!r} is empty; fill it in or remove the row")
    return value
