"""One renderer for every path: for a corpus of templates, the token ids the local engine scores are the llama.cpp
server's tokenization (its tokenize route) of the text the remote client sends, label word included; under the
chat template, the server's chat route sees as many prompt tokens as the engine scores, and their label scores
agree."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import numpy as np
import pytest

from nograd.clients.kinds import parse_endpoint, remote_client
from nograd.clients.render import label_words
from nograd.clients.types import EvalRequest, Examples, PromptSpec, TaskSpec
from nograd.engine import build_engine

pytestmark = pytest.mark.slow

EXAMPLES = Examples(
    texts=["a moving, beautiful film", "Dull. Boring!", "it's {fine} -- I guess"],
    labels=[1, 0, 1],
    texts2=["the film was good", "it was great", "nothing works"],
)
DEMOS = (("loved every minute", "a good film", 1), ("a waste of time", "bad film", 0))
SENTIMENT = ("negative", "positive")
CORPUS = {
    "space before the mask": "Review: {text}\nSentiment: {mask}",
    "no space before the mask": "Review: {text}\nSentiment:{mask}",
    "text after the mask": "{text} All in all, it was {mask}.",
    "escaped braces": '{{"review": "{text}"}} => {{{mask}}}',
    "prompt in the middle": "Classify the review.\n{prompt}\nReview: {text}\nSentiment: {mask}",
    "two texts": "Premise: {text}\nHypothesis: {text2}\nDoes the premise entail it? {mask}",
}


def _requests(template: str) -> list[EvalRequest]:
    verbalizer = ("no", "yes") if "text2" in template else SENTIMENT
    task = TaskSpec(template=template, labels=("0", "1"), verbalizer=verbalizer, demos=DEMOS)
    examples = EXAMPLES if "text2" in template else replace(EXAMPLES, texts2=None)
    texts = ["", "Rate the movie", "great \u00e9l\u00e8ve ending\n"]
    return [
        EvalRequest(replace(task, demos=()), examples, PromptSpec(mode="text"), texts=texts),
        EvalRequest(task, examples, PromptSpec(mode="demos"), z=np.array([[1, 0], [-1, 1]])),
    ]


@pytest.fixture(scope="module")
def engine():
    return build_engine("smollm2-135m", dtype="fp32", device="cpu")


def _tokenize(url: str, text: str) -> list[int]:
    root = url[:-3]
    tokens = httpx.post(f"{root}/extras/tokenize", json={"input": text}, timeout=30).json()["tokens"]
    empty = httpx.post(f"{root}/extras/tokenize", json={"input": ""}, timeout=30).json()["tokens"]
    return tokens, empty


@pytest.mark.parametrize("case", list(CORPUS))
def test_the_engine_scores_the_tokens_the_server_reads(engine, llamacpp_url, case):
    client = remote_client(parse_endpoint({"kind": "openai", "base_url": llamacpp_url, "model": "m"}))
    for request in _requests(CORPUS[case]):
        sequences, label_ids = engine.scored_tokens(request)
        texts = client.texts(request)
        assert len(texts) == len(sequences) == request.population
        for sent, scored in zip([t for row in texts for t in row], [s for row in sequences for s in row]):
            server, _ = _tokenize(llamacpp_url, sent)
            assert server == scored, f"{case}: {sent!r}"
        for word, label_id in zip(label_words(request.task), label_ids):
            tokens, specials = _tokenize(llamacpp_url, word)
            assert tokens[len(specials) :][0] == label_id, f"{case}: label {word!r}"


def test_the_chat_route_reads_what_the_engine_scores_under_the_chat_template(engine, llamacpp_url):
    task = TaskSpec(template=CORPUS["space before the mask"], labels=("0", "1"), verbalizer=SENTIMENT, chat=True)
    request = EvalRequest(task, replace(EXAMPLES, texts2=None), PromptSpec(mode="text"), texts=["", "Be brief."])
    sequences, _ = engine.scored_tokens(request)
    client = remote_client(
        parse_endpoint(
            {
                "kind": "openai",
                "base_url": llamacpp_url,
                "model": "m",
                "api": "chat",
                "top_logprobs": 20,
                "concurrency": 2,
            }
        )
    )
    for sent, scored in zip([t for row in client.texts(request) for t in row], [s for row in sequences for s in row]):
        body = {"model": "m", "messages": [{"role": "user", "content": sent}], "max_tokens": 1, "temperature": 0}
        answer = httpx.post(f"{llamacpp_url}/chat/completions", json=body, timeout=60).json()
        assert answer["usage"]["prompt_tokens"] == len(scored), sent
        chat_text = engine.handle.tokenizer.apply_chat_template(
            [{"role": "user", "content": sent}], add_generation_prompt=True, tokenize=False
        )
        assert _tokenize(llamacpp_url, chat_text)[0] == scored  # the same special tokens, parsed the same way

    async def remote():
        try:
            return await client.evaluate(request)
        finally:
            await client.aclose()

    far, near = asyncio.run(remote()), engine.evaluate(request)
    margins = far.logits[..., 1] - far.logits[..., 0], near.logits[..., 1] - near.logits[..., 0]
    # The same weights (Q4_1 in llama.cpp, dequantized here): margins agree to a few hundredths of a nat.
    assert np.median(np.abs(margins[0] - margins[1])) < 0.2 and far.usage["missing_label_words"] == 0
