"""The ModelClient contract, run against every endpoint implementation: the in-process engine and the
queue-backed client (batches through the queue to a worker running the same engine)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients import EvalRequest, Examples, LocalClient, ModelClient, ModelInfo, ProjectionSpec, PromptSpec, TaskSpec
from service.engine import Engine

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
EXAMPLES = Examples(texts=["the movie was great", "terrible plot", "a dull boring film"], labels=[1, 0, 0])


class QueuedEngine:
    """`QueueClient` + a `Worker` over a `MemoryQueue`, set up inside each call's event loop (every
    `asyncio.run` has its own). batch_size=2 splits populations into several batches."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def describe(self) -> ModelInfo:
        return self.engine.describe()

    async def evaluate(self, request: EvalRequest):
        from clients.queued import QueueClient
        from service.queue import MemoryQueue
        from service.worker import Worker

        queue, stop = MemoryQueue(), asyncio.Event()
        worker = asyncio.create_task(Worker(queue, {"tiny": self.engine}, poll=0.01).run(stop))
        try:
            client = QueueClient(queue, "job", "tiny", self.engine.describe(), batch_size=2)
            return await client.evaluate(request)
        finally:
            stop.set()
            await worker


@pytest.fixture(params=["local", "queue"])
def client(request, causal_handle) -> ModelClient:
    engine = Engine(causal_handle)
    return LocalClient(engine) if request.param == "local" else QueuedEngine(engine)


def test_describe(client):
    info = asyncio.run(client.describe())
    assert isinstance(client, ModelClient) and isinstance(info, ModelInfo)
    assert info.n_layers >= 1 and info.hidden_size >= 1 and info.model_id


@pytest.mark.parametrize("mode", ["none", "cat", "add", "deep"])
def test_evaluate_shapes_and_losses(client, mode):
    z = None if mode == "none" else np.random.default_rng(0).normal(size=(5, 6))
    request = EvalRequest(TASK, EXAMPLES, PromptSpec(mode=mode, n_tokens=3, projection=ProjectionSpec(dim=6)), z=z,
                          layer=0 if mode == "deep" else None, loss="hinge")
    result = asyncio.run(client.evaluate(request))
    population = 1 if z is None else 5
    assert result.logits.shape == (population, 3, 2)
    assert result.loss.shape == result.metric.shape == (population,)
    np.testing.assert_array_equal(result.loss, result.losses["hinge"])
    assert set(result.losses) == {"ce", "hinge", "perf"} and np.all((0 <= result.metric) & (result.metric <= 1))


def test_concurrent_requests_are_serialized_and_identical(client):
    request = EvalRequest(TASK, EXAMPLES, PromptSpec(mode="add", n_tokens=3, projection=ProjectionSpec(dim=6)),
                          z=np.ones((2, 6)))

    async def both():
        return await asyncio.gather(client.evaluate(request), client.evaluate(request))

    first, second = asyncio.run(both())
    np.testing.assert_array_equal(first.logits, second.logits)


def test_queue_results_equal_the_engine_s(causal_handle):
    engine = Engine(causal_handle)
    request = EvalRequest(TASK, EXAMPLES, PromptSpec(mode="add", n_tokens=3, projection=ProjectionSpec(dim=6)),
                          z=np.random.default_rng(1).normal(size=(5, 6)))
    direct = asyncio.run(LocalClient(engine).evaluate(request))
    queued = asyncio.run(QueuedEngine(engine).evaluate(request))  # 3 batches of 2, 2, 1 candidates
    np.testing.assert_allclose(queued.logits, direct.logits, atol=1e-5)
    np.testing.assert_allclose(queued.loss, direct.loss, atol=1e-6)


def test_queue_rejects_bad_input_with_the_engine_s_message(causal_handle):
    from clients.queued import EvaluationError

    too_long = Examples(texts=["word " * 5000], labels=[0])
    with pytest.raises(EvaluationError, match="tiny"):
        asyncio.run(QueuedEngine(Engine(causal_handle)).evaluate(EvalRequest(TASK, too_long)))
