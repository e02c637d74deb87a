"""The BatchQueue contract, run against the in-process queue and Redis Streams (a private redis-server)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from nograd.service.queue import Batch, BatchResult, MemoryQueue


@pytest.fixture(params=["memory", "redis"])
def make_queue(request):
    """A factory: queue(**options) for the parametrized implementation; all Redis queues of one test share a
    fresh namespace."""
    created = []
    namespace = f"t{uuid.uuid4().hex[:8]}"

    def factory(**options):
        if request.param == "memory":
            queue = MemoryQueue(max_deliveries=options.get("max_deliveries", 3))
            if created:
                return created[0]
        else:
            from nograd.service.queue import RedisQueue

            server = request.getfixturevalue("redis_server")
            queue = RedisQueue(server.url, namespace=namespace, **options)
        created.append(queue)
        return queue

    yield factory


def run(coro):
    return asyncio.run(coro)


def _batch(job="job_1", model="m", n=0) -> Batch:
    return Batch(id=f"b{n}-{uuid.uuid4().hex[:6]}", job_id=job, generation=n, model=model, context="ctx", work={"n": n})


def test_submit_take_finish_wait(make_queue):
    async def scenario():
        queue = make_queue()
        await queue.put_context("job_1", "ctx", b"data")
        assert await queue.get_context("job_1", "ctx") == b"data"
        batches = [_batch(n=i) for i in range(3)]
        await queue.submit(batches)
        assert (await queue.depth())["m"] == 3
        taken = []
        for _ in range(3):
            delivery = await queue.take("w1", ["m"], timeout=1)
            taken.append(delivery.batch.id)
            await queue.finish(
                delivery, BatchResult(batch_id=delivery.batch.id, ok=True, data={"v": delivery.batch.work["n"]})
            )
        assert taken == [b.id for b in batches]  # FIFO
        results = await queue.wait("job_1", [b.id for b in batches], timeout=2)
        assert [results[b.id].data["v"] for b in batches] == [0, 1, 2]
        assert (await queue.depth())["m"] == 0
        # a batch with a result is not queued again
        await queue.submit(batches[:1])
        assert await queue.take("w1", ["m"], timeout=0.2) is None
        await queue.forget_job("job_1")
        assert await queue.get_context("job_1", "ctx") is None
        await queue.close()

    run(scenario())


def test_first_result_wins(make_queue):
    async def scenario():
        queue = make_queue()
        batch = _batch()
        await queue.submit([batch])
        delivery = await queue.take("w1", ["m"], timeout=1)
        await queue.finish(delivery, BatchResult(batch_id=batch.id, ok=True, data={"v": 1}))
        await queue.finish(delivery, BatchResult(batch_id=batch.id, ok=True, data={"v": 2}))
        assert (await queue.wait("job_1", [batch.id], timeout=1))[batch.id].data == {"v": 1}
        await queue.close()

    run(scenario())


def test_workers_only_take_their_models(make_queue):
    async def scenario():
        queue = make_queue()
        await queue.submit([_batch(model="big")])
        assert await queue.take("w1", ["small"], timeout=0.2) is None
        assert (await queue.take("w2", ["small", "big"], timeout=1)).batch.model == "big"
        await queue.close()

    run(scenario())


def test_retry_then_dead_letter_with_the_error(make_queue):
    async def scenario():
        queue = make_queue(max_deliveries=3)
        batch = _batch()
        await queue.submit([batch])
        outcomes = []
        for _ in range(3):
            delivery = await queue.take("w1", ["m"], timeout=1)
            outcomes.append(await queue.retry(delivery, "RuntimeError: boom"))
        assert outcomes == [True, True, False]
        result = (await queue.wait("job_1", [batch.id], timeout=1))[batch.id]
        assert not result.ok and "boom" in result.error and "3 times" in result.error
        dead = await queue.dead_letters()
        assert dead[-1]["batch_id"] == batch.id and "boom" in dead[-1]["error"]
        assert await queue.take("w1", ["m"], timeout=0.2) is None
        await queue.close()

    run(scenario())


def test_wait_times_out_without_results(make_queue):
    async def scenario():
        queue = make_queue()
        with pytest.raises(TimeoutError):
            await queue.wait("job_1", ["missing"], timeout=0.3)
        await queue.close()

    run(scenario())


def test_heartbeats_expire(make_queue):
    async def scenario():
        queue = make_queue()
        await queue.heartbeat({"id": "w1", "models": {"m": {}}}, ttl=1)
        assert [w["id"] for w in await queue.workers()] == ["w1"]
        await asyncio.sleep(1.3)
        assert await queue.workers() == []
        await queue.close()

    run(scenario())


def test_redis_dead_worker_batch_is_reclaimed_then_dead_lettered(redis_server):
    """Redelivery after a crash is a Redis Streams feature (the in-process queue dies with its worker)."""
    from nograd.service.queue import RedisQueue

    async def scenario():
        queue = RedisQueue(redis_server.url, namespace=f"t{uuid.uuid4().hex[:8]}", claim_idle=0.2, max_deliveries=2)
        batch = _batch()
        await queue.submit([batch])
        first = await queue.take("dead-worker", ["m"], timeout=1)  # never finished: its worker "died"
        assert first.deliveries == 1
        assert await queue.take("w2", ["m"], timeout=0.05) is None  # not idle long enough yet
        await asyncio.sleep(0.3)
        second = await queue.take("w2", ["m"], timeout=1)
        assert second.batch.id == batch.id and second.deliveries == 2
        await asyncio.sleep(0.3)  # w2 dies too: the third delivery would exceed max_deliveries
        assert await queue.take("w3", ["m"], timeout=0.2) is None
        result = (await queue.wait("job_1", [batch.id], timeout=1))[batch.id]
        assert not result.ok and "died or stalled" in result.error
        assert (await queue.depth())["m"] == 0
        await queue.close()

    run(scenario())


def test_identical_batches_of_two_jobs_each_get_a_result(make_queue):
    """Two jobs scoring the same examples with the same prompt (e.g. two manual baselines) submit batches with the
    same content id; each job must get its own result."""

    async def scenario():
        queue = make_queue()
        first = Batch(id="same", job_id="job_a", generation=0, model="m", context="ctx", work={})
        second = Batch(id="same", job_id="job_b", generation=0, model="m", context="ctx", work={})
        await queue.submit([first])
        await queue.submit([second])
        for _ in range(2):
            delivery = await queue.take("w1", ["m"], timeout=1)
            await queue.finish(delivery, BatchResult(batch_id="same", ok=True, data={"job": delivery.batch.job_id}))
        assert (await queue.wait("job_a", ["same"], timeout=1))["same"].data == {"job": "job_a"}
        assert (await queue.wait("job_b", ["same"], timeout=1))["same"].data == {"job": "job_b"}
        await queue.close()

    run(scenario())


def test_redis_malformed_entry_is_dead_lettered_not_retried(redis_server):
    from nograd.service.queue import RedisQueue

    async def scenario():
        queue = RedisQueue(redis_server.url, namespace=f"t{uuid.uuid4().hex[:8]}")
        good = _batch()
        await queue.submit([good])  # creates the stream and group
        first = await queue.take("w1", ["m"], timeout=1)
        await queue.redis.xadd(queue._key("q", "m"), {"batch": b"{not json"})
        await queue.redis.xadd(queue._key("q", "m"), {"other": b"x"})
        await queue.submit([later := _batch(n=1)])
        assert (await queue.take("w1", ["m"], timeout=1)).batch.id == later.id  # poison skipped
        await queue.finish(first, BatchResult(batch_id=good.id, ok=True))
        dead = await queue.dead_letters()
        assert len(dead) == 2 and all("malformed" in d["error"] for d in dead)
        await queue.close()

    run(scenario())


def test_a_batch_whose_job_ended_is_dropped_quietly(caplog):
    """A cancel forgets the job's task data while its batch waits: the worker drops the batch at once with one INFO
    line (no traceback at ERROR, no retries), and the result says why."""
    from nograd.engine.fake import FakeEngine
    from nograd.service.worker import Worker

    async def scenario():
        queue = MemoryQueue()
        batch = _batch(model="fake")  # its context "ctx" was never put (or forgotten by the cancel)
        await queue.submit([batch])
        worker = Worker(queue, {"fake": FakeEngine()})
        delivery = await queue.take(worker.id, ["fake"], timeout=1)
        assert await worker.process_one(delivery) == "rejected"
        result = (await queue.wait("job_1", [batch.id], timeout=1))[batch.id]
        assert not result.ok and "not in the queue" in result.error
        assert await queue.take(worker.id, ["fake"], timeout=0.2) is None  # not redelivered
        await queue.close()

    with caplog.at_level("INFO", logger="nograd"):
        run(scenario())
    assert [r.levelname for r in caplog.records if "dropped" in r.getMessage()] == ["INFO"]
    assert not [r for r in caplog.records if r.levelno >= 40]
