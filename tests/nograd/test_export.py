"""Exports (`nograd.export`, `nograd export`): a BBT prompt as a PEFT prompt-tuning adapter that PEFT loads and that
gives the label scores and test metric `nograd eval` gives; discrete prompts as text and chat messages that score
exactly as the run's prompt did; vLLM `prompt_embeds` equal to the engine's own inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import save_small_llama

from nograd.artifacts import load_prompt, prompt_bytes, read_prompt
from nograd.cli import main
from nograd.clients.render import label_words
from nograd.clients.types import EvalRequest, PromptSpec, TaskSpec
from nograd.engine import Engine, load_model
from nograd.export import ExportError, export_files, prompt_embeds
from nograd.pipeline import to_examples
from nograd.tasks import get_task

SMALL = ["--k-shot", "2", "--dev-every", "8", "--budget", "16", "--popsize", "8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, causal_tokenizer):
    return save_small_llama(tmp_path_factory.mktemp("export") / "small-llama", causal_tokenizer, seed=3)


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(load_model(model_dir, dtype="fp32", device="cpu"))


def _run(out: Path, model: str, *options: str) -> dict:
    args = ["run", "--task", "mr", "--model", model, "--dtype", "fp32", "--device", "cpu", *options, "--out", str(out)]
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())


def _eval_metric(capsys, prompt: Path) -> float:
    capsys.readouterr()
    assert main(["eval", "--prompt", str(prompt), "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)["metric"]


def config_tokens(model) -> int:
    return model.peft_config["default"].num_virtual_tokens


def _peft_label_logits(model_dir: str, adapter: Path, texts: list[str]) -> tuple[np.ndarray, list[int]]:
    """Label-word logits at the last input position of PEFT's model on `texts`, (E, K) fp32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    about = json.loads((adapter / "nograd_template.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    label_ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in about["label_words"].values()]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    rows = []
    with torch.inference_mode():  # right-padded batches: PEFT puts its tokens (and mask ones) before each row
        encoded = [
            tokenizer(about["input_template"].format(text=t), add_special_tokens=False)["input_ids"] for t in texts
        ]
        for start in range(0, len(encoded), 64):
            batch = encoded[start : start + 64]
            width = max(len(ids) for ids in batch)
            ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in batch])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = mask.sum(dim=1) - 1 + config_tokens(model)
            rows.extend(logits[torch.arange(len(batch)), last][:, label_ids].float().numpy())
    return np.stack(rows), label_ids


@pytest.mark.parametrize("mode", ["add", "cat"])
def test_peft_adapter_gives_the_scores_of_nograd_eval(model_dir, engine, tmp_path, capsys, mode):
    out = tmp_path / "run"
    _run(out, model_dir, "--method", "bbt", "--mode", mode, "--dim", "6", "--n-tokens", "3", *SMALL)
    assert main(["export", str(out), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["token_dim"] == 64
    assert config["num_virtual_tokens"] == 3 + 1  # the prompt, and the tokenizer's <s> before it folded in

    saved = load_prompt(out / "prompt.safetensors")
    test = to_examples(get_task("mr"), get_task("mr").test)  # the whole test split
    expected = engine.evaluate(EvalRequest(saved["task_spec"], test, saved["spec"], z=saved["x"][None])).logits[0]
    got, _ = _peft_label_logits(model_dir, tmp_path / "peft", test.texts)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.abs(expected).max() > 1e-2  # real logits, not zeros on both sides
    # PEFT's accuracy is nograd eval's test metric
    accuracy = float(np.mean(got.argmax(axis=1) == np.asarray(test.labels)))
    assert accuracy == pytest.approx(_eval_metric(capsys, out / "prompt.safetensors"), abs=1e-12)


def test_prompt_embeds_are_the_engines_inputs(model_dir, engine, tmp_path):
    out = tmp_path / "run"
    _run(out, model_dir, "--method", "bbt", "--dim", "6", "--n-tokens", "3", *SMALL)
    files = export_files((out / "prompt.safetensors").read_bytes(), "peft")
    folder = tmp_path / "peft"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    saved = load_prompt(out / "prompt.safetensors")
    task = get_task("mr")
    test = to_examples(task, task.test[:5])
    expected, _ = engine.input_embeddings(EvalRequest(saved["task_spec"], test, saved["spec"], z=saved["x"][None]))
    handle = engine.handle
    for source in (folder, out / "prompt.safetensors"):
        got = prompt_embeds(source, test.texts, model=handle.model, tokenizer=handle.tokenizer)
        for row, want in zip(got, expected[0]):
            np.testing.assert_allclose(row.numpy(), want, atol=1e-6, rtol=0)


DISCRETE = {
    "manual": [],
    "icl": ["--icl-shots", "1"],
    "icl_search": ["--icl-shots", "1", *SMALL],
    "bbpl": ["--prompt-length", "3", "--vocab-size", "20", *SMALL],
}


@pytest.mark.parametrize("method", [*sorted(DISCRETE), "rlprompt"])
def test_text_and_chat_exports_score_as_the_run_did(model_dir, engine, tmp_path, method):
    """The exported template, filled with an example and followed by the label word, is the string the run's
    prompt was scored on: re-scored as a plain template it gives the same logits. A short search may keep its empty
    start, so the same holds for a chosen prompt text with braces in it and a demonstration row with gaps."""
    out = tmp_path / "run"
    options = DISCRETE.get(method) or ["--policy-model", model_dir, "--top-k", "20", "--prompt-length", "2", *SMALL]
    _run(out, model_dir, "--method", method, *options)
    data = (out / "prompt.safetensors").read_bytes()
    _check_text_export(engine, data)
    saved = read_prompt(data)
    if saved["spec"].mode in ("text", "demos"):
        chosen = {"text": "Be {brief} and fair.", "demos": None}[saved["spec"].mode]
        x = np.array([1.0, -1.0, 0.0]) if saved["spec"].mode == "demos" else saved["x"]
        fields = {k: saved[k] for k in ("config", "spec", "task_spec", "model_id", "scoring")}
        _check_text_export(engine, prompt_bytes(**fields, x=x, materialized=None, text=chosen))


def _check_text_export(engine, data: bytes) -> None:
    text = json.loads(export_files(data, "text")["prompt.json"])
    chat = json.loads(export_files(data, "chat")["messages.json"])
    assert chat["messages"] == [{"role": "user", "content": text["template"]}]
    assert export_files(data, "text")["prompt.txt"].decode() == text["template"]

    saved = read_prompt(data)
    spec, task = saved["spec"], saved["task_spec"]
    examples = to_examples(get_task("mr"), get_task("mr").test[:40])
    if spec.mode == "demos":
        original = EvalRequest(task, examples, spec, z=np.asarray(saved["x"], float)[None])
        assert [d["text"] for d in text["demonstrations"]] == [task.demos[int(i)][0] for i in saved["x"] if i >= 0]
    elif spec.mode == "text":
        original = EvalRequest(task, examples, spec, texts=[saved["text"]])
        assert text["prompt_text"] == (saved["text"] or None)
        assert not saved["text"] or saved["text"].replace("{", "{{").replace("}", "}}") in text["template"]
    else:
        original = EvalRequest(task, examples, spec)
    plain = TaskSpec(
        template=text["template"] + " {mask}", labels=task.labels, verbalizer=task.verbalizer, metric=task.metric
    )
    assert list(text["label_words"].values()) == list(label_words(task))
    again = EvalRequest(plain, examples, PromptSpec(mode="none"))
    np.testing.assert_array_equal(engine.evaluate(again).logits, engine.evaluate(original).logits)


def test_exports_a_method_does_not_have_are_refused_with_the_alternative(tmp_path):
    out = tmp_path / "run"
    _run(out, "fake", "--method", "bbtv2", "--budget", "40", "--popsize", "5", "--dim", "4", "--k-shot", "2")
    data = (out / "prompt.safetensors").read_bytes()
    with pytest.raises(ExportError, match="no such adapter type.*native"):
        export_files(data, "peft")
    with pytest.raises(ExportError, match="no text form.*native"):
        export_files(data, "text")
    assert export_files(data, "native") == {"prompt.safetensors": data}
    manual = tmp_path / "manual"
    _run(manual, "fake", "--method", "manual")
    with pytest.raises(ExportError, match="text or chat"):
        export_files((manual / "prompt.safetensors").read_bytes(), "peft")
    with pytest.raises(ExportError, match="unknown"):
        export_files(data, "onnx")
    with pytest.raises(ValueError, match="not a nograd prompt file"):
        export_files(b"garbage", "text")


def test_cli_export_refuses_to_overwrite_and_names_a_missing_source(tmp_path, capsys):
    out = tmp_path / "run"
    _run(out, "fake", "--method", "manual")
    assert main(["export", str(out), "--format", "text", "--out", str(tmp_path / "t")]) == 0
    assert main(["export", str(out), "--format", "text", "--out", str(tmp_path / "t")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(out), "--format", "text", "--out", str(tmp_path / "t"), "--force"]) == 0
    assert main(["export", str(tmp_path / "nope.safetensors"), "--format", "text", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
