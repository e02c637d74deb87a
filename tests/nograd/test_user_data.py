"""A user's own file just works: a held-out test split by default (stratified, seeded, the same rows on every path),
k_shot lowered to what a small file allows with a note, explicit choices respected or refused naming the field and
the largest value that fits; the README's own-data example runs as written (on the fake model) and prints a test
metric."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nograd.cli import main
from nograd.config import ConfigError, ResolvedConfig, RunConfig
from nograd.pipeline import load_task, resolve_run
from nograd.tasks import AUTO_TEST_MAX, DatasetError, load_user_dataset

TEMPLATE = "Review: {text}\nSentiment: {mask}"
VERBALIZER = "neg:negative,pos:positive"


def write_reviews(path: Path, per_label: int, labels=("neg", "pos")) -> Path:
    """`per_label` rows of each label, labels interleaved (as a real file would be)."""
    words = {"neg": "dull", "pos": "great", "mid": "fine"}
    rows = [{"text": f"a {words[lab]} film, number {i}", "label": lab} for i in range(per_label) for lab in labels]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(path: Path, **options) -> RunConfig:
    return RunConfig.from_dict(
        {"task": None, "dataset": str(path), "template": TEMPLATE, "verbalizer": VERBALIZER, "model": "fake", **options}
    )


# ------------------------------------------------------------------ the automatic test split
def test_an_80_row_file_gets_a_stratified_test_split_and_k_shot_16(tmp_path):
    path = write_reviews(tmp_path / "reviews.jsonl", 40)
    resolved, data = resolve_run(config(path))
    assert resolved.test_fraction == 0.2 and resolved.k_shot == 16
    assert Counter(data.task.test[i].label for i in range(len(data.task.test))) == {"neg": 8, "pos": 8}
    assert len(data.task.pool) == 64 and not set(data.task.pool) & set(data.task.test)
    assert len(data.test) == 16 and len(data.train) == len(data.dev) == 32
    assert any("held out 16 of 80 rows" in note for note in resolved.notes)


def test_the_split_is_the_same_rows_for_every_seed_and_on_reload(tmp_path):
    path = write_reviews(tmp_path / "reviews.jsonl", 40)
    first, data = resolve_run(config(path, seed=0))
    other, other_data = resolve_run(config(path, seed=7))
    assert data.task.test == other_data.task.test  # the test set belongs to the file, not to the run
    assert data.hashes["train"] != other_data.hashes["train"]  # the few-shot split still follows the seed
    # What a run directory or a job stores reloads (with the recorded fraction, no re-deciding) to the same rows.
    reloaded = ResolvedConfig.from_dict(json.loads(json.dumps(first.to_dict())))
    assert reloaded == first and load_task(reloaded).test == data.task.test
    # The library call with the same fraction holds out the same rows.
    direct = load_user_dataset(path, template=TEMPLATE, verbalizer=VERBALIZER, test_fraction=first.test_fraction)
    assert direct.test == data.task.test


def test_a_large_file_holds_out_at_most_the_cap(tmp_path):
    path = write_reviews(tmp_path / "big.jsonl", 3500)  # 7000 rows: 20% would be 1400
    resolved, data = resolve_run(config(path))
    assert resolved.test_fraction == pytest.approx(AUTO_TEST_MAX / 7000)
    assert 990 <= len(data.task.test) <= AUTO_TEST_MAX
    assert load_task(ResolvedConfig.from_dict(json.loads(json.dumps(resolved.to_dict())))).test == data.task.test


def test_a_file_too_small_for_a_split_says_so(tmp_path):
    path = write_reviews(tmp_path / "tiny.jsonl", 8)  # 8 per label: a split would leave 7 for train and dev
    resolved, data = resolve_run(config(path))
    assert resolved.test_fraction == 0.0 and data.task.test == ()
    assert any("no held-out test split" in note and "test_metric will be null" in note for note in resolved.notes)
    assert resolved.k_shot == 4 and any("k_shot lowered from 16 to 4" in note for note in resolved.notes)


def test_a_separate_test_file_replaces_the_split(tmp_path):
    path = write_reviews(tmp_path / "train.jsonl", 40)
    test = write_reviews(tmp_path / "test.jsonl", 5)
    resolved, data = resolve_run(config(path, test_dataset=str(test)))
    assert resolved.test_fraction == 0.0 and len(data.task.pool) == 80 and len(data.task.test) == 10
    assert resolved.notes == ()


# ------------------------------------------------------------------ explicit choices
def test_test_fraction_0_is_respected(tmp_path):
    path = write_reviews(tmp_path / "reviews.jsonl", 40)
    resolved, data = resolve_run(config(path, test_fraction=0))
    assert data.task.test == () and resolved.test_fraction == 0.0 and resolved.notes == ()


def test_a_test_fraction_that_does_not_fit_names_the_largest_that_does(tmp_path):
    path = write_reviews(tmp_path / "reviews.jsonl", 10)
    with pytest.raises(ConfigError) as caught:
        resolve_run(config(path, test_fraction=0.95))
    assert caught.value.field == "test_fraction" and "largest test_fraction that fits is 0.89" in caught.value.message
    assert len(resolve_run(config(path, test_fraction=0.89, k_shot=1))[1].task.test) == 16
    with pytest.raises(DatasetError, match="test_fraction"):
        load_user_dataset(path, template=TEMPLATE, verbalizer=VERBALIZER, test_fraction=0.9)


def test_k_shot_is_lowered_with_a_note_when_unset(tmp_path):
    path = write_reviews(tmp_path / "reviews.jsonl", 20)  # 4 per label held out, 16 left: k_shot 8
    resolved, data = resolve_run(config(path))
    assert resolved.k_shot == 8 and len(data.train) == len(data.dev) == 16 and len(data.test) == 8
    (note,) = [n for n in resolved.notes if "k_shot" in n]
    assert "k_shot lowered from 16 to 8" in note and "16 rows" in note


def test_a_k_shot_the_user_set_is_kept_or_refused_with_the_largest_that_fits(tmp_path):
    path = write_reviews(tmp_path / "reviews.jsonl", 20)
    assert resolve_run(config(path, k_shot=5))[0].k_shot == 5
    with pytest.raises(ConfigError) as caught:
        resolve_run(config(path, k_shot=16))
    assert caught.value.field == "k_shot"
    assert "largest k_shot that fits is 8" in caught.value.message and "test_fraction" in caught.value.message
    assert resolve_run(config(path, k_shot=8))[0].notes[-1].startswith("held out")


def test_a_label_with_one_row_is_an_error_naming_the_data(tmp_path):
    path = tmp_path / "one.jsonl"
    rows = [{"text": f"great {i}", "label": "pos"} for i in range(10)] + [{"text": "dull", "label": "neg"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError) as caught:
        resolve_run(config(path))
    assert caught.value.field == "dataset" and "'neg' has 1 row" in caught.value.message


def test_bundled_tasks_keep_their_settings():
    resolved, _ = resolve_run(RunConfig.from_dict({"task": "mr"}))
    assert resolved.k_shot == 16 and resolved.test_fraction == 0.0 and resolved.notes == ()


# ------------------------------------------------------------------ the CLI
README_EXAMPLE = [
    "run",
    "--dataset",
    "reviews.jsonl",
    "--template",
    "Review: {text}\nSentiment: {mask}",  # the shell passes \n literally; the template reads it as a newline
    "--verbalizer",
    "neg:negative,pos:positive",
    "--method",
    "bbt",
    "--budget",
    "400",
    "--out",
    "runs/mine",
]


def test_the_readme_own_data_example_prints_a_test_metric(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_reviews(tmp_path / "reviews.jsonl", 40)  # the 80-row file the example implies
    assert main([*README_EXAMPLE, "--model", "fake"]) == 0  # the fake model instead of downloading smollm2
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["test_metric"] is not None and 0.0 <= printed["test_metric"] <= 1.0
    assert printed["calls"] == 400
    assert "nograd: note: held out 16 of 80 rows as the test set" in captured.err
    # the progress line said what the run was doing at every step
    for said in ("loading fake", "scoring the initial prompt", "searching", "400/400 calls", "16/16 examples"):
        assert said in captured.err, said
    saved = json.loads((tmp_path / "runs/mine/config.json").read_text())
    assert saved["k_shot"] == 16 and saved["test_fraction"] == 0.2 and saved["notes"]
    # Re-scoring the saved prompt finds the same held-out rows.
    assert main(["eval", "--prompt", "runs/mine/prompt.safetensors"]) == 0
    evaluated = capsys.readouterr()
    assert json.loads(evaluated.out)["metric"] == pytest.approx(printed["test_metric"], abs=1e-12)
    assert "loading fake" in evaluated.err and "scoring the prompt on test" in evaluated.err
    assert "16/16 examples" in evaluated.err


def test_cli_notes_a_lowered_k_shot_and_refuses_one_that_does_not_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_reviews(tmp_path / "reviews.jsonl", 20)
    quick = ["--model", "fake", "--method", "manual"]
    assert main([*README_EXAMPLE[:7], *quick]) == 0
    captured = capsys.readouterr()
    assert "nograd: note: k_shot lowered from 16 to 8" in captured.err
    assert json.loads(captured.out)["test_metric"] is not None
    assert main([*README_EXAMPLE[:7], *quick, "--k-shot", "12"]) == 2
    err = capsys.readouterr().err
    assert "nograd: error: k_shot:" in err and "largest k_shot that fits is 8" in err
    assert main([*README_EXAMPLE[:7], *quick, "--test-fraction", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["test_metric"] is None
