"""The vLLM client's soft-prompt path against a fake vLLM server that runs the tiny model on the posted
`prompt_embeds`: BBT candidates scored remotely equal the local engine's scores (same model, fp32)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from procs import free_port

from nograd.clients.kinds import parse_endpoint
from nograd.clients.local import LocalClient
from nograd.clients.types import EvalRequest, Examples, ProjectionSpec, PromptSpec, TaskSpec
from nograd.clients.vllm import VLLMClient
from nograd.engine import Engine

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
EXAMPLES = Examples(texts=["the movie was great", "a dull boring film", "terrible plot"], labels=[1, 0, 0])


class FakeVLLM:
    def __init__(self, handle):
        self.handle, self.bodies = handle, []
        self.app = FastAPI()
        self.app.post("/v1/completions")(self.completions)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))

    async def completions(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        embeds = torch.load(io.BytesIO(base64.b64decode(body["prompt_embeds"])), weights_only=True)
        with torch.no_grad():
            logits = self.handle.model(inputs_embeds=embeds[None].to(self.handle.dtype)).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, -1)
        top = torch.topk(logprobs, body.get("logprobs", 5))
        out = {
            "top_logprobs": [
                {self.handle.tokenizer.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices)}
            ]
        }
        if "logprob_token_ids" in body:
            out["logprob_token_ids"] = [{str(i): float(logprobs[i]) for i in body["logprob_token_ids"]}]
        return {
            "choices": [{"text": "", "logprobs": out}],
            "usage": {"prompt_tokens": int(embeds.shape[0]), "completion_tokens": 1},
        }

    def __enter__(self):
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True


def test_bbt_candidates_through_prompt_embeds_match_the_local_engine(causal_handle):
    engine = Engine(causal_handle)
    spec = PromptSpec(mode="cat", n_tokens=3, projection=ProjectionSpec(seed=1, dim=8))
    z = np.random.default_rng(0).normal(size=(2, 8))
    request = EvalRequest(TASK, EXAMPLES, spec, z=z)
    local = asyncio.run(LocalClient(engine).evaluate(request))
    with FakeVLLM(causal_handle) as fake:
        client = VLLMClient(
            parse_endpoint(
                {
                    "kind": "vllm",
                    "base_url": f"http://127.0.0.1:{fake.port}/v1",
                    "model": "tiny",
                    "top_logprobs": 100,
                    "exact_label_ids": True,
                }
            ),
            embedder=engine,
        )

        async def go():
            try:
                return await client.evaluate(request)
            finally:
                await client.aclose()

        remote = asyncio.run(go())
    assert len(fake.bodies) == 6 and all("prompt" not in b for b in fake.bodies)
    assert remote.usage["requests"] == 6 and remote.usage["label_scores"] == 12
    # Log-probabilities and the engine's label logits differ by one constant per example: same losses.
    assert remote.usage["missing_label_words"] == 0
    np.testing.assert_allclose(remote.loss, local.loss, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(remote.metric, local.metric)
    assert fake.bodies[0]["logprob_token_ids"] == [int(i) for i in engine.input_embeddings(request)[1]]
