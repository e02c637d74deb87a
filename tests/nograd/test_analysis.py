"""A run's analysis (`nograd.analysis`): confusion matrices and changed examples from hand-made predictions, the
prompt descriptions, `score`'s predictions against its metric, and the analysis a run writes (`nograd run`)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from runs import resolved

from nograd import analysis, pipeline
from nograd.cli import main
from nograd.clients import LocalClient, TokenNeighbor
from nograd.clients.losses import macro_f1
from nograd.clients.types import Examples, ProjectionSpec, PromptSpec, TaskSpec
from nograd.engine import FakeEngine

TASK = TaskSpec(
    template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos", "mixed"), verbalizer=("bad", "good", "ok")
)


# ------------------------------------------------------------------ pure pieces
def test_confusion_counts_gold_rows_against_predicted_columns():
    gold = [0, 0, 1, 1, 1, 2]
    predicted = [0, 1, 1, 1, 2, 0]
    assert analysis.confusion(gold, predicted, 3) == [[1, 1, 0], [0, 2, 1], [1, 0, 0]]
    assert analysis.confusion([], [], 2) == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="label indices"):
        analysis.confusion([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        analysis.confusion([0, 1], [0], 3)


def test_changed_examples_are_fixed_and_broken_with_names_and_capped():
    examples = Examples(texts=["a", "b" * 400, "c", "d", "e"], labels=[0, 1, 2, 1, 0], texts2=["x", "y", "z", "w", "v"])
    manual = [1, 0, 2, 1, 0]  # 0, 1 wrong; 2, 3, 4 right
    tuned = [0, 1, 0, 0, 0]  # 0, 1 right (fixed); 2, 3 wrong (broken); 4 right in both
    changed = analysis.changed_examples(examples, TASK.labels, manual, tuned)
    assert [e["index"] for e in changed["fixed"]] == [0, 1] and [e["index"] for e in changed["broken"]] == [2, 3]
    assert changed["fixed"][0] == {
        "index": 0,
        "text": "a",
        "text2": "x",
        "gold": "neg",
        "manual": "pos",
        "tuned": "neg",
    }
    assert len(changed["fixed"][1]["text"]) == analysis.MAX_TEXT and changed["fixed"][1]["text"].endswith("…")
    assert changed["broken"][0]["gold"] == "mixed" and changed["broken"][0]["tuned"] == "neg"
    capped = analysis.changed_examples(examples, TASK.labels, manual, tuned, limit=1)
    assert len(capped["fixed"]) == len(capped["broken"]) == 1 and (capped["n_fixed"], capped["n_broken"]) == (2, 2)


def test_explain_puts_both_prompts_side_by_side():
    test = Examples(texts=["a", "b", "c", "d"], labels=[0, 1, 2, 1])
    tuned = {"metric": 0.75, "predictions": [0, 1, 2, 0]}
    manual = {"metric": 0.25, "predictions": [1, 1, 0, 0]}
    prompt = analysis.describe_prompt(TASK, PromptSpec(mode="text"), np.array([3.0]), "think carefully")
    out = analysis.explain(TASK, test, metric_name="accuracy", prompt=prompt, tuned=tuned, manual=manual)
    assert out["labels"] == ["neg", "pos", "mixed"] and out["n_test"] == 4
    assert out["prompt"]["kind"] == "text" and out["prompt"]["text"] == "think carefully"
    assert out["prompt"]["verbalizer"] == {"neg": "bad", "pos": "good", "mixed": "ok"}
    assert out["tuned"] == {"metric": 0.75, "confusion": [[1, 0, 0], [1, 1, 0], [0, 0, 1]]}
    assert out["manual"]["confusion"] == [[0, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert [e["index"] for e in out["changed"]["fixed"]] == [0, 2] and out["changed"]["broken"] == []
    json.dumps(out)  # plain data
    empty = analysis.explain(TASK, Examples([], []), metric_name="accuracy", prompt=prompt, tuned=None, manual=None)
    assert empty["tuned"] is empty["manual"] is empty["changed"] is None


def test_prompt_descriptions_of_every_kind():
    demos = TaskSpec(**{**TASK.to_dict(), "demos": (("fine film", None, 1), ("awful", None, 0), ("meh", None, 2))})
    manual = analysis.describe_prompt(TASK, PromptSpec(), None, None)
    assert manual["kind"] == "manual" and manual["template"] == TASK.template
    assert analysis.describe_prompt(TASK, PromptSpec(mode="text"), None, "")["kind"] == "manual"  # the empty start
    assert analysis.describe_prompt(demos, PromptSpec(mode="demos"), np.full(2, -1.0), None)["kind"] == "manual"

    chosen = analysis.describe_prompt(demos, PromptSpec(mode="demos"), np.array([2.0, -1.0, 0.0]), None)
    assert chosen["kind"] == "demos"
    assert [(d["index"], d["text"], d["label"]) for d in chosen["demonstrations"]] == [
        (2, "meh", "mixed"),
        (0, "fine film", "pos"),
    ]
    icl = analysis.describe_prompt(demos, PromptSpec(), None, None)  # the icl baseline shows every demonstration
    assert [d["index"] for d in icl["demonstrations"]] == [0, 1, 2]

    soft = PromptSpec(mode="add", n_tokens=2, projection=ProjectionSpec(dim=8))
    hint = [[TokenNeighbor(5, " good", 0.5), TokenNeighbor(6, " ok", 0.25)], []]
    described = analysis.describe_prompt(TASK, soft, np.zeros(8), None, hint)
    assert described["kind"] == "soft" and described["n_tokens"] == 2 and described["dim"] == 8
    assert described["nearest_tokens"] == [
        [{"id": 5, "token": " good", "similarity": 0.5}, {"id": 6, "token": " ok", "similarity": 0.25}],
        [],
    ]
    assert analysis.describe_prompt(TASK, soft, np.zeros(8), None)["nearest_tokens"] is None
    assert analysis.describe_prompt(TASK, PromptSpec(mode="deep", n_tokens=3), None, None)["kind"] == "deep"


# ------------------------------------------------------------------ scoring
@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_score_predictions_are_what_the_metric_counts(metric):
    task = TaskSpec(**{**TASK.to_dict(), "metric": metric})
    rng = np.random.default_rng(0)
    examples = Examples(texts=[f"text {i}" for i in range(40)], labels=[int(v) for v in rng.integers(0, 3, 40)])
    client = LocalClient(FakeEngine())
    z = np.full(8, 0.1)  # near the fake model's neutral point: some examples right, some wrong
    prompt = PromptSpec(mode="cat", n_tokens=2, projection=ProjectionSpec(dim=8))
    scored = asyncio.run(pipeline.score(client, task, examples, prompt, z, chunk=16, predictions=True))
    plain = asyncio.run(pipeline.score(client, task, examples, prompt, z, chunk=16))
    assert "predictions" not in plain and {k: scored[k] for k in plain} == plain  # the metric does not change
    predictions = np.asarray(scored["predictions"])
    assert predictions.shape == (40,) and set(predictions) <= {0, 1, 2}
    labels = np.asarray(examples.labels)
    expected = np.mean(predictions == labels) if metric == "accuracy" else macro_f1(predictions[None], labels, 3)[0]
    assert scored["metric"] == pytest.approx(expected, abs=1e-12)
    assert 0 < np.mean(predictions == labels) < 1  # a real mix of right and wrong, so the check can fail


class CountingFake(FakeEngine):
    """The fake model, counting the examples it scored without a prompt (the manual prompt's passes)."""

    manual_examples = 0

    def evaluate(self, request):
        if request.prompt.mode == "none":
            self.manual_examples += len(request.examples)
        return super().evaluate(request)


def _searched(config, data, client) -> dict:
    async def go():
        search = pipeline.make_search(config, data.spec, data.train, data.dev, 4)
        await search.start(client)
        while not search.done:
            await search.step(client)
        return await pipeline.finalize(config, data, client, "fake", search, 0.0)

    return asyncio.run(go())[3]


def test_a_fake_run_compares_with_the_manual_prompt_and_scores_it_once():
    config = resolved(task="trec", method="bbt", model="fake", budget=20, popsize=10, dim=8, dev_every=10)
    data = pipeline.prepare(config)
    engine = CountingFake()
    client = LocalClient(engine)
    pipeline._MANUAL_TEST.clear()
    result, _, _, out = asyncio.run(pipeline.finalize(config, data, client, "fake", None, 0.0))
    assert out["prompt"]["kind"] == "manual"  # the baseline needs no second pass, and keeps its test scores
    assert out["tuned"] == out["manual"] and out["changed"]["n_fixed"] == out["changed"]["n_broken"] == 0
    baseline = engine.manual_examples  # train, dev and test, once each
    assert baseline == len(data.train) + len(data.dev) + len(data.test) and len(pipeline._MANUAL_TEST) == 1
    kept = _searched(config, data, client)  # a search after the baseline: its comparison costs nothing
    assert engine.manual_examples == baseline

    pipeline._MANUAL_TEST.clear()
    out = _searched(config, data, client)
    assert engine.manual_examples == baseline + len(data.test) and len(pipeline._MANUAL_TEST) == 1
    again = _searched(config, data, client)  # the same manual prompt on the same test set: not scored again
    assert engine.manual_examples == baseline + len(data.test) and again == out == kept

    assert out["prompt"]["kind"] == "soft" and out["prompt"]["nearest_tokens"] is None  # the fake has no vocabulary
    assert out["manual"]["metric"] == pytest.approx(result["test_metric"])
    n_test = len(data.test)
    for side in ("tuned", "manual"):
        counts = np.asarray(out[side]["confusion"])
        np.testing.assert_array_equal(counts.sum(1), np.bincount(data.test.labels, minlength=len(out["labels"])))
    tuned_right, manual_right = np.trace(out["tuned"]["confusion"]), np.trace(out["manual"]["confusion"])
    assert tuned_right - manual_right == out["changed"]["n_fixed"] - out["changed"]["n_broken"]
    assert out["changed"]["n_fixed"] > 0  # the search moved the fake model's predictions
    assert out["tuned"]["metric"] == pytest.approx(tuned_right / n_test)


# ------------------------------------------------------------------ nograd run
POSITIVE = ["the movie was great", "a wonderful story", "the acting superb", "great and wonderful"]
POSITIVE += ["what a great story", "superb acting , great movie"]
NEGATIVE = ["a dull boring film", "terrible plot", "awful pacing", "bad jokes and a dull plot", "boring and bad"]
NEGATIVE += ["terrible , awful film"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, causal_tokenizer):
    from tiny import make_causal

    root = tmp_path_factory.mktemp("analysis")
    model_dir = root / "tiny-llama"
    make_causal().save_pretrained(model_dir)
    causal_tokenizer.save_pretrained(model_dir)
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    train, test = root / "train.jsonl", root / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:4] + rows[6:10]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[4:6] + rows[10:]))
    return {"model": str(model_dir), "train": str(train), "test": str(test)}


def _run(files, out, method: str) -> dict:
    args = ["run", "--dataset", files["train"], "--test-dataset", files["test"], "--model", files["model"]]
    args += ["--template", "Review: {text}\nSentiment: {mask}", "--verbalizer", "neg:bad,pos:great"]
    args += ["--dtype", "fp32", "--device", "cpu", "--method", method, "--budget", "16", "--popsize", "8"]
    args += ["--dim", "6", "--n-tokens", "3", "--k-shot", "2", "--dev-every", "8", "--out", str(out)]
    assert main(args) == 0
    return json.loads((out / "analysis.json").read_text())


def test_nograd_run_writes_the_analysis(files, tmp_path, capsys):
    manual = _run(files, tmp_path / "manual", "manual")
    manual_result = json.loads((tmp_path / "manual" / "result.json").read_text())
    assert manual["prompt"]["kind"] == "manual" and manual["n_test"] == 4
    assert manual["tuned"]["metric"] == manual["manual"]["metric"] == manual_result["test_metric"]

    tuned = _run(files, tmp_path / "bbt", "bbt")
    result = json.loads((tmp_path / "bbt" / "result.json").read_text())
    assert tuned["tuned"]["metric"] == pytest.approx(result["test_metric"])
    assert tuned["manual"] == manual["manual"]  # the same manual prompt on the same test set and model
    assert tuned["prompt"]["kind"] == "soft" and tuned["prompt"]["mode"] == "add"
    nearest = tuned["prompt"]["nearest_tokens"]
    assert len(nearest) == 3 and all(len(row) == analysis.NEAREST_K for row in nearest)
    assert all(isinstance(n["token"], str) and -1 <= n["similarity"] <= 1 for row in nearest for n in row)
    assert sum(map(sum, tuned["tuned"]["confusion"])) == 4
    capsys.readouterr()
