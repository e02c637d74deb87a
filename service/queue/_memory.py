"""The embedded queue: the `BatchQueue` interface over asyncio queues, for `nograd serve` without Redis."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

from ._base import Batch, BatchQueue, BatchResult, Delivery, dead_letter_record, dead_letter_result


class MemoryQueue(BatchQueue):
    """Single process, single event loop. Nothing survives the process; jobs still resume from the store's
    checkpoints, which is all a restart needs (batches are resubmitted by the job runner)."""

    def __init__(self, max_deliveries: int = 3):
        self.max_deliveries = max_deliveries
        self._queues: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self._contexts: dict[tuple[str, str], bytes] = {}
        self._results: dict[str, dict[str, BatchResult]] = defaultdict(dict)
        self._queued: set[tuple[str, str]] = set()  # (job, batch): identical batches of two jobs are two batches
        self._changed = asyncio.Condition()
        self._workers: dict[str, tuple[float, dict]] = {}
        self._dead: deque = deque(maxlen=1000)
        self._inflight: dict[str, int] = defaultdict(int)

    async def put_context(self, job_id: str, key: str, data: bytes) -> None:
        self._contexts[(job_id, key)] = data

    async def get_context(self, job_id: str, key: str) -> bytes | None:
        return self._contexts.get((job_id, key))

    async def submit(self, batches: list[Batch]) -> None:
        for batch in batches:
            if batch.id in self._results[batch.job_id] or (batch.job_id, batch.id) in self._queued:
                continue
            self._queued.add((batch.job_id, batch.id))
            await self._queues[batch.model].put(batch)

    async def wait(self, job_id: str, batch_ids: list[str], timeout: float | None = None) -> dict[str, BatchResult]:
        results = self._results[job_id]

        def ready() -> bool:
            return all(i in results for i in batch_ids)

        # asyncio.timeout, not wait_for: on Python 3.11, wait_for around a Condition's wait_for can swallow the
        # cancel a runner's shutdown sends, leaving the job waiting on a worker that has stopped
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(ready)
        return {i: results[i] for i in batch_ids}

    async def forget_job(self, job_id: str) -> None:
        self._results.pop(job_id, None)
        for key in [k for k in self._contexts if k[0] == job_id]:
            del self._contexts[key]

    async def take(self, consumer: str, models: list[str], timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while True:
            for model in models:
                queue = self._queues[model]
                if not queue.empty():
                    batch = queue.get_nowait()
                    self._inflight[model] += 1
                    return Delivery(batch=batch, handle=model)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(0.005, remaining))

    async def finish(self, delivery: Delivery, result: BatchResult) -> None:
        batch = delivery.batch
        self._queued.discard((batch.job_id, batch.id))
        self._inflight[delivery.handle] -= 1
        self._results[batch.job_id].setdefault(batch.id, result)
        async with self._changed:
            self._changed.notify_all()

    async def retry(self, delivery: Delivery, error: str) -> bool:
        batch = delivery.batch
        if batch.attempts + delivery.deliveries >= self.max_deliveries:
            self._dead.append(dead_letter_record(batch, error))
            await self.finish(delivery, dead_letter_result(delivery, error, worker=""))
            return False
        batch.attempts += 1
        self._inflight[delivery.handle] -= 1
        await self._queues[batch.model].put(batch)
        return True

    async def heartbeat(self, worker: dict, ttl: float) -> None:
        self._workers[worker["id"]] = (time.time() + ttl, dict(worker))

    async def leave(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self) -> list[dict]:
        now = time.time()
        return [info for expires, info in self._workers.values() if expires > now]

    async def depth(self) -> dict[str, int]:
        return {model: queue.qsize() + self._inflight[model] for model, queue in self._queues.items()}

    async def dead_letters(self, limit: int = 100) -> list[dict]:
        return list(self._dead)[-limit:]
