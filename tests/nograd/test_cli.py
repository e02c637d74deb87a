"""`nograd run` / `nograd eval` end to end on a tiny saved model and a user dataset."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from nograd.cli import main

POSITIVE = [
    "the movie was great",
    "a wonderful story",
    "the acting superb",
    "great and wonderful",
    "what a great story",
    "superb acting , great movie",
]
NEGATIVE = [
    "a dull boring film",
    "terrible plot",
    "awful pacing",
    "bad jokes and a dull plot",
    "terrible , awful film",
    "boring and bad",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, causal_tokenizer):
    from tiny import make_causal

    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-llama"
    make_causal().save_pretrained(model_dir)
    causal_tokenizer.save_pretrained(model_dir)
    rows = [{"review": t, "sentiment": "pos"} for t in POSITIVE] + [{"review": t, "sentiment": "neg"} for t in NEGATIVE]
    train = root / "reviews.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows[:4] + rows[6:10]) + "\n")
    test = root / "test.jsonl"
    test.write_text("\n".join(json.dumps(r) for r in rows[4:6] + rows[10:]) + "\n")
    return {"model": str(model_dir), "train": str(train), "test": str(test), "root": root}


def _run_args(files, out, method="bbt", seed=0):
    return [
        "run",
        "--dataset",
        files["train"],
        "--test-dataset",
        files["test"],
        "--text-field",
        "review",
        "--label-field",
        "sentiment",
        "--template",
        "Review: {text}\nSentiment: {mask}",
        "--verbalizer",
        "neg:bad,pos:great",
        "--model",
        files["model"],
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--method",
        method,
        "--budget",
        "24",
        "--popsize",
        "8",
        "--dim",
        "6",
        "--n-tokens",
        "3",
        "--k-shot",
        "2",
        "--dev-every",
        "8",
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]


@pytest.mark.parametrize("method", ["bbt", "bbtv2", "manual", "icl"])
def test_run_writes_artifacts_and_eval_reproduces(files, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(_run_args(files, out, method)) == 0
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["budget"] == 24
    history = (out / "history.jsonl").read_text().splitlines()
    if method in ("bbt", "bbtv2"):
        assert result["calls"] == 24 and len(history) == 3
        assert all("losses" in json.loads(line) for line in history)
    else:
        assert result["calls"] == 0 and history == []
    assert set(result["data_hashes"]) >= {"train", "dev", "test"} and result["model_id"].startswith(files["model"])
    with safe_open(str(out / "prompt.safetensors"), framework="numpy") as fh:
        assert {"spec", "task_spec", "config"} <= set(fh.metadata())
        if method in ("bbt", "bbtv2"):
            assert fh.get_tensor("prompt").shape == ((3, 32) if method == "bbt" else (3, 3, 32))
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "prompt.safetensors"), "--device", "cpu"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["metric"] == pytest.approx(result["test_metric"], abs=1e-12)


def test_same_seed_same_result(files, tmp_path):
    results = []
    for name in ("a", "b"):
        assert main(_run_args(files, tmp_path / name, seed=3)) == 0
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    for key in ("test_metric", "dev_metric", "best_train_loss", "selected_at_calls"):
        assert results[0][key] == results[1][key]
    assert (tmp_path / "a" / "history.jsonl").read_text().count("losses") == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--label-field": "stars"}, "stars"),
        ({"--verbalizer": "neg:bad"}, "pos"),
        ({"--template": "Review: {text}"}, "mask"),
        ({"--budget": "2"}, "budget"),
    ],
)
def test_bad_input_is_a_clear_error(files, tmp_path, capsys, change, message):
    args = _run_args(files, tmp_path / "bad")
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nograd: error:" in err and message in err


def test_run_bbpl_against_a_remote_endpoint(files, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))
    from fake_openai import FakeOpenAI

    monkeypatch.setenv("FAKE_KEY", "sk-cli-secret")
    with FakeOpenAI() as fake:
        endpoint = json.dumps({"kind": "openai", "base_url": fake.url, "model": "m", "api_key_secret": "FAKE_KEY"})
        args = _run_args(files, tmp_path / "run", method="bbpl")
        args += ["--endpoint", endpoint, "--prompt-length", "2", "--ngram-min-count", "1", "--popsize", "4"]
        assert main(args) == 0
        assert all(h["authorization"] == "Bearer sk-cli-secret" for h in fake.headers)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["calls"] == 24 and result["usage"]["requests"] > 0 and result["model_id"].startswith("openai:m@")
    assert "sk-cli-secret" not in (tmp_path / "run" / "config.json").read_text()
