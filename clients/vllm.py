"""vLLM's OpenAI-compatible server: text prompts as for any OpenAI-compatible server, and BBT's `cat` soft prompts
through `prompt_embeds` (the whole input as embeddings) on the completions API."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import ClassVar, Protocol

import numpy as np

from .endpoint import EndpointConfig, RemoteError
from .labels import label_scores
from .openai import OpenAIClient
from .render import label_words
from .types import DISCRETE_MODES, EvalRequest, EvalResult


class Embedder(Protocol):
    """A local copy of the served model's input embeddings and tokenizer (`nograd.engine.Engine` over the same
    weights): per candidate and example the (T, H) float32 input embeddings up to the scored position, and the
    label words' first token ids."""

    def input_embeddings(self, request: EvalRequest) -> tuple[list[list[np.ndarray]], list[int]]: ...


class VLLMClient(OpenAIClient):
    """vLLM's server. `cat` candidates are turned into whole-input embeddings by `embedder` and sent as
    `prompt_embeds` (a base64 `torch.save` tensor). With `config.exact_label_ids`, label words are scored exactly
    through vLLM's `logprob_token_ids` (the label words' first token ids, from `embedder`) instead of the top
    list."""

    kind: ClassVar[str] = "vllm"
    description: ClassVar[str] = "vLLM's server: text prompts, and BBT soft prompts (mode cat) via prompt_embeds"
    prompt_modes: ClassVar[tuple[str, ...]] = ("none", "cat", *DISCRETE_MODES)
    #: Soft prompts are sent as embeddings built here from a local copy of the served weights.
    embeds_locally: ClassVar[bool] = True

    def __init__(self, config: EndpointConfig, api_key: str | None = None, *, embedder: Embedder | None = None, **kw):
        super().__init__(config, api_key, **kw)
        self.embedder = embedder

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        if request.prompt.mode != "cat":
            return await super().evaluate(request)
        if self.embedder is None:
            raise RemoteError("soft prompts on vLLM need the served model's embeddings here (embedder)")
        started = time.perf_counter()
        before = dict(self.usage)
        rows, label_ids = self.embedder.input_embeddings(request)  # (P, E) float32 arrays (T, H)
        words = label_words(request.task)

        async def one(embeds: np.ndarray) -> list[float]:
            body = {
                "model": self.config.model,
                "prompt_embeds": encode_embeds(embeds),
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": self.config.top_logprobs,
            }
            if self.config.exact_label_ids:
                body["logprob_token_ids"] = [int(i) for i in label_ids]
            data = await self._post("completions", body)
            if self.config.exact_label_ids:
                try:
                    found = data["choices"][0]["logprobs"]["logprob_token_ids"][0]
                    scores = [float(found[str(i)]) for i in label_ids]
                except (KeyError, IndexError, TypeError, AttributeError, ValueError):
                    scores = None  # no exact scores in this answer: the top list's (or its error) below
                if scores is not None:
                    self.usage["label_scores"] += len(label_ids)
                    return scores
            scores, missing = label_scores(self._top_logprobs(data), words, self.config.floor_margin)
            self.usage["label_scores"] += len(words)
            self.usage["missing_label_words"] += missing
            return scores

        results = await asyncio.gather(*[one(e) for row in rows for e in row])
        logits = np.asarray(results, dtype=np.float64).reshape(len(rows), len(rows[0]), -1)
        return await self._result(request, logits, started, before)


def encode_embeds(embeds: np.ndarray) -> str:
    """vLLM's prompt_embeds wire format: base64 of `torch.save` of a (T, H) tensor."""
    import torch  # only this path needs torch; the rest of the clients layer is numpy-only

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)), buffer)
    return base64.b64encode(buffer.getvalue()).decode()
