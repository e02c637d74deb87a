"""The ModelClient contract, run against every endpoint implementation (today: the in-process engine)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients import EvalRequest, Examples, LocalClient, ModelClient, ModelInfo, ProjectionSpec, PromptSpec, TaskSpec
from service.engine import Engine

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
EXAMPLES = Examples(texts=["the movie was great", "terrible plot", "a dull boring film"], labels=[1, 0, 0])


@pytest.fixture(params=["local"])
def client(request, causal_handle) -> ModelClient:
    return LocalClient(Engine(causal_handle))


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
