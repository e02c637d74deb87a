"""The ModelClient contract, run against every endpoint implementation: the in-process engine (`LocalClient`), the
fake engine, the service's queue (`QueueClient`: batches through a queue to a worker running the engine), the
OpenAI-compatible client against a fake server and against llama.cpp's server (slow)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import asynccontextmanager

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from nograd.clients import (
    EvalRequest,
    Examples,
    InvalidRequest,
    LocalClient,
    ModelClient,
    ModelInfo,
    ProjectionSpec,
    PromptSpec,
    TaskSpec,
)
from nograd.clients.kinds import parse_endpoint, remote_client
from nograd.engine import Engine, FakeEngine
from nograd.service.queue import MemoryQueue
from nograd.service.queue.client import QueueClient
from nograd.service.worker import Worker

TASK = TaskSpec(
    template="Review: {text}\nSentiment: {mask}",
    labels=("neg", "pos"),
    verbalizer=("bad", "great"),
    demos=(("a great film", None, 1), ("bad acting", None, 0)),
)
EXAMPLES = Examples(texts=["the movie was great", "terrible plot", "a dull boring film"], labels=[1, 0, 0])
REQUESTS = {  # one request per prompt mode: (prompt spec, request fields); population 2 where it has candidates
    "none": (PromptSpec(mode="none"), {}),
    "cat": (
        PromptSpec(mode="cat", n_tokens=3, projection=ProjectionSpec(dim=6)),
        {"z": np.random.default_rng(0).normal(size=(2, 6))},
    ),
    "add": (
        PromptSpec(mode="add", n_tokens=3, projection=ProjectionSpec(dim=6)),
        {"z": np.random.default_rng(1).normal(size=(2, 6))},
    ),
    "deep": (
        PromptSpec(mode="deep", n_tokens=3, projection=ProjectionSpec(dim=6)),
        {"z": np.random.default_rng(2).normal(size=(2, 6)), "layer": 0},
    ),
    "text": (PromptSpec(mode="text"), {"texts": ["", "a great film"]}),
    "demos": (PromptSpec(mode="demos"), {"z": np.array([[1, 0], [-1, 0]])}),
}
ENDPOINTS = ["local", "fake", "queue", "openai", pytest.param("llamacpp", marks=pytest.mark.slow)]


def _request(mode: str, generation: int = 0) -> EvalRequest:
    spec, fields = REQUESTS[mode]
    return EvalRequest(TASK, EXAMPLES, spec, loss="hinge", generation=generation, **fields)


@pytest.fixture(scope="module")
def openai_server():
    with FakeOpenAI() as fake:
        yield fake.url


@pytest.fixture(params=ENDPOINTS)
def opener(request, causal_handle):
    """An async context manager factory that opens the endpoint inside the test's event loop."""
    kind = request.param
    url = (
        request.getfixturevalue("llamacpp_url" if kind == "llamacpp" else "openai_server")
        if kind in ("openai", "llamacpp")
        else None
    )

    @asynccontextmanager
    async def open_client():
        if kind == "local":
            client = LocalClient(Engine(causal_handle))
        elif kind == "fake":
            client = LocalClient(FakeEngine(n_layers=3))
        elif kind == "queue":
            engine = Engine(causal_handle)
            queue, stop = MemoryQueue(), asyncio.Event()
            worker = asyncio.create_task(Worker(queue, {"tiny": engine}, poll=0.01).run(stop))
            client = QueueClient(queue, "job", "tiny", engine.describe(), batch_size=1)
        else:
            client = remote_client(
                parse_endpoint({"kind": "openai", "base_url": url, "model": "m", "concurrency": 2, "top_logprobs": 5})
            )
        try:
            yield client
        finally:
            await client.aclose()
            await client.aclose()  # twice is harmless
            if kind == "queue":
                stop.set()
                await worker

    return open_client


def test_conforms_to_the_protocol(opener):
    async def go():
        async with opener() as client:
            info = await client.describe()
            assert isinstance(client, ModelClient) and isinstance(info, ModelInfo)
            assert info.model_id and set(info.prompt_modes) <= set(REQUESTS) and "none" in info.prompt_modes
            assert isinstance(client.usage, Mapping)
            materialized = await client.materialize(REQUESTS["add"][0], np.zeros(6))
            assert materialized is None or materialized.shape == (3, info.hidden_size)

    asyncio.run(go())


def test_every_served_mode_scores_the_population(opener):
    async def go():
        async with opener() as client:
            info = await client.describe()
            for mode in info.prompt_modes:
                result = await client.evaluate(_request(mode, generation=3))
                population = _request(mode).population
                assert result.logits.shape == (population, 3, 2), mode
                assert result.loss.shape == result.metric.shape == (population,)
                assert np.all(np.isfinite(result.logits))
                np.testing.assert_array_equal(result.loss, result.losses["hinge"])
                assert set(result.losses) == {"ce", "hinge", "perf"}
                assert np.all((result.metric >= 0) & (result.metric <= 1))

    asyncio.run(go())


def test_the_same_request_scores_the_same_also_concurrently(opener):
    async def go():
        async with opener() as client:
            mode = "add" if "add" in (await client.describe()).prompt_modes else "text"
            first, second = await asyncio.gather(client.evaluate(_request(mode)), client.evaluate(_request(mode)))
            again = await client.evaluate(_request(mode))
            np.testing.assert_array_equal(first.logits, second.logits)
            np.testing.assert_array_equal(first.logits, again.logits)

    asyncio.run(go())


def test_bad_input_is_an_invalid_request(opener):
    async def go():
        async with opener() as client:
            info = await client.describe()
            bad = [
                EvalRequest(TASK, EXAMPLES, PromptSpec(mode="text"), texts=["a {mask} b"]),
                EvalRequest(TASK, EXAMPLES, PromptSpec(mode="demos"), z=np.array([[7]])),
            ]
            bad += [_request(mode) for mode in REQUESTS if mode not in info.prompt_modes]
            for request in bad:
                with pytest.raises(InvalidRequest):
                    await client.evaluate(request)

    asyncio.run(go())


def test_queue_results_equal_the_engine_s(causal_handle):
    """Split into batches of 2, 2, 1 candidates through the queue: the same scores as in-process (to float rounding:
    this tiny model's passes with one candidate are GEMMs of a few rows, which take another kernel path)."""
    engine = Engine(causal_handle)
    request = EvalRequest(TASK, EXAMPLES, REQUESTS["add"][0], z=np.random.default_rng(1).normal(size=(5, 6)))

    async def go():
        queue, stop = MemoryQueue(), asyncio.Event()
        worker = asyncio.create_task(Worker(queue, {"tiny": engine}, poll=0.01).run(stop))
        try:
            return await QueueClient(queue, "job", "tiny", engine.describe(), batch_size=2).evaluate(request)
        finally:
            stop.set()
            await worker

    queued = asyncio.run(go())
    direct = asyncio.run(LocalClient(engine).evaluate(request))
    np.testing.assert_allclose(queued.logits, direct.logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(queued.loss, direct.loss, rtol=0, atol=1e-6)


def test_queue_batches_carry_the_request_s_generation(causal_handle):
    class Recording(MemoryQueue):
        generations: list[int] = []

        async def submit(self, batches):
            self.generations += [b.generation for b in batches]
            await super().submit(batches)

    engine = Engine(causal_handle)

    async def go():
        queue, stop = Recording(), asyncio.Event()
        worker = asyncio.create_task(Worker(queue, {"tiny": engine}, poll=0.01).run(stop))
        try:
            await QueueClient(queue, "job", "tiny", engine.describe(), batch_size=1).evaluate(_request("add", 7))
        finally:
            stop.set()
            await worker
        return queue.generations

    assert asyncio.run(go()) == [7, 7]


def test_queue_rejects_bad_input_with_the_engine_s_message(causal_handle):
    too_long = Examples(texts=["word " * 5000], labels=[0])
    engine = Engine(causal_handle)

    async def go():
        queue, stop = MemoryQueue(), asyncio.Event()
        worker = asyncio.create_task(Worker(queue, {"tiny": engine}, poll=0.01).run(stop))
        try:
            await QueueClient(queue, "job", "tiny", engine.describe()).evaluate(EvalRequest(TASK, too_long))
        finally:
            stop.set()
            await worker

    with pytest.raises(InvalidRequest, match="'tiny'.*context"):
        asyncio.run(go())
