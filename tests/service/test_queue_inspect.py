"""Prompt inspection through the service's batch queue: `QueueClient.materialize` and `nearest_tokens` are answered
by a worker's engine, over the in-process queue and Redis Streams, and give exactly what the local engine gives; a
service job's downloaded prompt then carries the materialized tensor."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager

import numpy as np
import pytest

from nograd.clients import InvalidRequest, ProjectionSpec, PromptSpec
from nograd.engine import Engine, FakeEngine
from nograd.service.queue import Batch, MemoryQueue
from nograd.service.queue.client import QueueClient
from nograd.service.queue.wire import batch_id, encode_inspect
from nograd.service.worker import Worker

CAT = PromptSpec(mode="cat", n_tokens=3, projection=ProjectionSpec(dim=6))
ADD = PromptSpec(mode="add", n_tokens=3, projection=ProjectionSpec(dim=6))
DEEP = PromptSpec(mode="deep", n_tokens=3, projection=ProjectionSpec(dim=6), scales=(0.5, 0.25, 0.125))
Z = np.random.default_rng(4).normal(size=6)
BASE = np.random.default_rng(5).normal(size=(3, 6))  # deep: one row per layer of the tiny model


@pytest.fixture(params=["memory", "redis"])
def new_queue(request):
    """A factory of a fresh queue of the parametrized kind (Redis: the private server, a fresh namespace)."""
    if request.param == "memory":
        return MemoryQueue
    from nograd.service.queue import RedisQueue

    server = request.getfixturevalue("redis_server")
    return lambda: RedisQueue(server.url, namespace=f"t{uuid.uuid4().hex[:8]}")


@asynccontextmanager
async def served(queue, engine, **worker_options):
    """A QueueClient for job `job` whose batches a running worker answers with `engine` (model "m")."""
    stop = asyncio.Event()
    worker = Worker(queue, {"m": engine}, poll=0.01, **worker_options)
    task = asyncio.create_task(worker.run(stop))
    try:
        yield QueueClient(queue, "job", "m", engine.describe()), worker
    finally:
        stop.set()
        await task
        await queue.close()


def test_the_queue_materializes_exactly_what_the_engine_does(new_queue, causal_handle):
    engine = Engine(causal_handle)
    cases = [(CAT, Z), (ADD, Z), (ADD, None), (DEEP, BASE), (PromptSpec(mode="none"), None)]

    async def go():
        async with served(new_queue(), engine) as (client, worker):
            out = [await client.materialize(spec, x) for spec, x in cases]
            assert worker.errors == 0
            return out

    for (spec, x), tensor in zip(cases, asyncio.run(go())):
        direct = engine.materialize(spec, x)
        assert tensor.dtype == np.float32 and np.array_equal(tensor, direct), spec.mode
    assert tensor.shape == (0, causal_handle.hidden_size)  # no soft prompt: empty, as the engine says
    assert np.any(asyncio.run(_one(new_queue(), engine, "materialize", DEEP, BASE)) != 0)  # not trivially equal


async def _one(queue, engine, method: str, *args):
    async with served(queue, engine) as (client, _):
        return await getattr(client, method)(*args)


def test_the_queue_gives_the_engine_s_nearest_tokens(new_queue, causal_handle):
    engine = Engine(causal_handle)
    cases = [(CAT, Z, 4), (ADD, Z, 3), (ADD, None, 1)]

    async def go():
        async with served(new_queue(), engine) as (client, _):
            return [await client.nearest_tokens(spec, x, k) for spec, x, k in cases]

    for (spec, x, k), rows in zip(cases, asyncio.run(go())):
        direct = engine.nearest_tokens(spec, x, k)
        assert rows == direct, spec.mode  # the same token ids, texts and similarities (exact floats)
        assert len(rows) == 3 and all(len(row) == k for row in rows)


class _NoTensor(FakeEngine):
    """A model that can score but has no prompt tensor to show (materialize answers None)."""

    def materialize(self, spec, x):
        return None


def test_an_engine_that_cannot_tell_still_answers_none(new_queue):
    async def go():
        async with served(new_queue(), _NoTensor(n_layers=3)) as (client, worker):
            out = await client.nearest_tokens(ADD, Z, 5), await client.materialize(ADD, Z)
            assert worker.errors == 0
        async with served(new_queue(), FakeEngine(n_layers=3)) as (client, _):
            return (*out, await client.nearest_tokens(ADD, Z, 5), await client.materialize(DEEP, BASE))

    none_rows, no_tensor, fake_rows, fake_tensor = asyncio.run(go())
    assert none_rows is None and no_tensor is None and fake_rows is None
    assert np.array_equal(fake_tensor, FakeEngine(n_layers=3).materialize(DEEP, BASE))


def test_a_prompt_over_the_cap_is_refused_with_its_size_and_the_job_keeps_z(new_queue, causal_handle, caplog):
    engine = Engine(causal_handle)
    small = 3 * 32 * 4  # one layer's (3, 32) prompt fits; the deep (3, 3, 32) one does not

    async def go():
        async with served(new_queue(), engine, max_prompt_bytes=small) as (client, worker):
            out = await client.materialize(ADD, Z), await client.materialize(DEEP, BASE)
            assert worker.errors == 0  # a refusal is an answer, not a failure
            return out

    with caplog.at_level(logging.WARNING, logger="nograd"):
        fits, deep = asyncio.run(go())
    assert np.array_equal(fits, engine.materialize(ADD, Z)) and deep is None
    [warning] = [r.getMessage() for r in caplog.records if "materialized prompt" in r.getMessage()]
    assert "3 x 3 x 32 float32" in warning and "keeps z" in warning and "job" in warning


def test_bad_input_is_rejected_with_the_engine_s_message(new_queue, causal_handle):
    engine = Engine(causal_handle)
    unpinned = PromptSpec(mode="deep", n_tokens=3, projection=ProjectionSpec(dim=6))  # deep needs its scales

    async def go():
        async with served(new_queue(), engine) as (client, worker):
            with pytest.raises(InvalidRequest, match="'m'.*prompt.scales"):
                await client.materialize(unpinned, BASE)
            with pytest.raises(InvalidRequest, match="'m'.*cat/add"):
                await client.nearest_tokens(DEEP, BASE, 3)
            with pytest.raises(InvalidRequest, match="k must be"):
                await client.nearest_tokens(ADD, Z, 0)
            return worker.errors

    assert asyncio.run(go()) == 3  # each rejected once, none retried


def test_process_one_outcomes_of_inspections(causal_handle):
    """done for an answer, rejected (not retried) for a malformed inspection; neither needs the job's task data."""

    async def go():
        queue = MemoryQueue()
        worker = Worker(queue, {"m": Engine(causal_handle)})
        good = encode_inspect("materialize", ADD, Z)
        bad = {**encode_inspect("nearest_tokens", ADD, Z, 2), "inspect": "weights"}
        outcomes = []
        for work in (good, bad):
            batch = Batch(id=batch_id("", work), job_id="j", generation=-1, model="m", context="", work=work)
            await queue.submit([batch])
            outcomes.append(await worker.process_one(await queue.take(worker.id, ["m"], timeout=1)))
            result = (await queue.wait("j", [batch.id], timeout=1))[batch.id]
        assert not result.ok and result.rejected and "unknown inspection 'weights'" in result.error
        assert await queue.take(worker.id, ["m"], timeout=0.05) is None
        return outcomes, worker.batches_done, worker.candidates_done

    assert asyncio.run(go()) == (["done", "rejected"], 1, 0)


def test_inspections_take_the_fair_share_gate(causal_handle):
    entered = []

    @asynccontextmanager
    async def gate():
        entered.append(1)
        yield

    async def go():
        queue, stop = MemoryQueue(), asyncio.Event()
        engine = Engine(causal_handle)
        task = asyncio.create_task(Worker(queue, {"m": engine}, poll=0.01).run(stop))
        try:
            client = QueueClient(queue, "job", "m", engine.describe(), gate=gate)
            await client.materialize(ADD, Z)
            await client.nearest_tokens(ADD, Z, 2)
        finally:
            stop.set()
            await task

    asyncio.run(go())
    assert len(entered) == 2


# ---------------------------------------------------------------- a service job end to end (embedded worker)
def _service(tmp_path, models: list[str], engines: dict | None = None):
    from apiclient import Api
    from fastapi.testclient import TestClient

    from nograd.service.api import create_app
    from nograd.service.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", models=models, auth=True, lease_seconds=2.0)
    client = TestClient(create_app(settings, engines=engines), base_url="http://127.0.0.1")
    return client, lambda: Api(client, {"alice": client.app.state.store.create_key("alice")})


def _finished_prompt(api, **job) -> tuple[dict, dict]:
    from nograd.artifacts import read_prompt

    submitted = api.submit(**job)
    finished = api.wait(submitted["id"], timeout=300)
    assert finished["status"] == "succeeded", finished
    response = api("GET", f"/v1/jobs/{submitted['id']}/prompt")
    assert response.status_code == 200, response.text
    analysis = api("GET", f"/v1/jobs/{submitted['id']}/analysis").json()
    return read_prompt(response.content), analysis


def test_a_service_job_s_prompt_download_has_the_materialized_tensor(tmp_path):
    """Fake model, the embedded queue and worker: a soft prompt's download carries the tensor the worker's engine
    built for the job's z; a discrete baseline's carries none (it has no tensor)."""
    client, make_api = _service(tmp_path, ["fake"])
    job = {"method": "bbt", "task": "trec", "model": "fake", "budget": 20, "dev_every": 10}
    with client:
        api = make_api()
        soft, analysis = _finished_prompt(api, **job, options={"dim": 8, "popsize": 10, "n_tokens": 4})
        manual, _ = _finished_prompt(api, **{**job, "method": "manual"})
    assert soft["x"] is not None and soft["spec"].mode in ("cat", "add")
    assert soft["prompt"].shape == (4, 16)
    assert np.array_equal(soft["prompt"], FakeEngine().materialize(soft["spec"], soft["x"]))
    assert analysis["prompt"]["nearest_tokens"] is None  # the fake model has no vocabulary
    assert manual["prompt"] is None


def test_a_service_job_on_a_real_model_gets_what_a_local_run_gets(tmp_path, causal_handle):
    """A tiny real model behind the embedded worker: the downloaded prompt's tensor and the analysis's nearest
    tokens are exactly the engine's for the job's prompt."""
    from nograd.analysis import NEAREST_K

    engine = Engine(causal_handle)
    client, make_api = _service(tmp_path, ["tiny"], engines={"tiny": engine})
    job = {"method": "bbt", "task": "mr", "model": "tiny", "budget": 8, "dev_every": 4}
    with client:
        saved, analysis = _finished_prompt(make_api(), **job, options={"dim": 6, "popsize": 4, "n_tokens": 3})
    spec, x = saved["spec"], saved["x"]
    assert saved["prompt"].shape == (3, causal_handle.hidden_size)
    assert np.array_equal(saved["prompt"], engine.materialize(spec, x))
    expected = [
        [{"id": n.id, "token": n.token, "similarity": n.similarity} for n in row]
        for row in engine.nearest_tokens(spec, x, NEAREST_K)
    ]
    assert analysis["prompt"]["nearest_tokens"] == expected and len(expected) == 3
