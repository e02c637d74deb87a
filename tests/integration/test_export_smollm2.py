"""The PEFT round trip on the real built-in SmolLM2-135M, in fp32: a BBT prompt tuned by `nograd run`, exported
with `nograd export --format peft`, loaded by `peft.PeftModel.from_pretrained` on the same weights, gives the label
scores nograd's engine gives (to 1e-4) and the test metric `nograd eval` reports."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from runs import task_files

from nograd.artifacts import load_prompt
from nograd.cli import main
from nograd.clients.types import EvalRequest
from nograd.engine import build_engine
from nograd.pipeline import to_examples
from nograd.tasks import get_task

pytestmark = pytest.mark.slow
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def engine():
    try:
        return build_engine("smollm2-135m", dtype="fp32", device="cpu", memory_cap_mb=256)
    except ValueError as exc:  # package with the model file not installed
        pytest.skip(str(exc))


def test_peft_round_trip_on_the_builtin_model(engine, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nograd.engine.models import builtin_model_path

    # mr's rows as a user dataset with a 40-row test file, so the run's test passes stay short in fp32
    mr = get_task("mr")
    train, test, format_ = task_files(tmp_path, "mr", per_label=40, n_test=40)
    data = ["--dataset", str(train), "--test-dataset", str(test)]
    data += ["--template", format_["template"], "--verbalizer", format_["verbalizer"]]
    out = tmp_path / "run"
    run = ["run", *data, "--model", "smollm2-135m", "--dtype", "fp32", "--device", "cpu", "--method", "bbt"]
    small = ["--budget", "20", "--popsize", "10", "--k-shot", "4", "--dev-every", "20", "--out", str(out)]
    assert main([*run, *small]) == 0
    assert main(["export", str(out), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    about = json.loads((tmp_path / "peft" / "nograd_template.json").read_text())
    saved = load_prompt(out / "prompt.safetensors")

    test = to_examples(mr, mr.test[:40])
    started = time.perf_counter()
    expected = engine.evaluate(EvalRequest(saved["task_spec"], test, saved["spec"], z=saved["x"][None])).logits[0]
    engine_seconds = time.perf_counter() - started

    tokenizer = engine.handle.tokenizer
    label_ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in about["label_words"].values()]
    base = AutoModelForCausalLM.from_pretrained(builtin_model_path("smollm2-135m"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    n_virtual = model.peft_config["default"].num_virtual_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        encoded = [
            tokenizer(about["input_template"].format(text=t), add_special_tokens=False)["input_ids"] for t in test.texts
        ]
        for start in range(0, len(encoded), 32):
            batch = encoded[start : start + 32]
            width = max(len(ids) for ids in batch)
            ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits
            rows.extend(logits[torch.arange(len(batch)), mask.sum(dim=1) - 1 + n_virtual][:, label_ids].numpy())
    peft_seconds = time.perf_counter() - started
    got = np.stack(rows)

    difference = float(np.abs(got - expected).max())
    accuracy = float(np.mean(got.argmax(axis=1) == np.asarray(test.labels)))
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "prompt.safetensors"), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    print(
        f"PEFT round trip on smollm2-135m fp32, {len(test)} mr test examples, {about['virtual_tokens']} virtual "
        f"tokens: max |logit difference| {difference:.2e}, PEFT accuracy {accuracy:.4f}, nograd eval "
        f"{evaluated['metric']:.4f}; engine {engine_seconds:.1f} s, PEFT {peft_seconds:.1f} s"
    )
    assert difference < 1e-4
    assert accuracy == pytest.approx(evaluated["metric"], abs=1e-12)
    assert accuracy == pytest.approx(json.loads((out / "result.json").read_text())["test_metric"], abs=1e-12)
