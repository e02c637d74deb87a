"""Model workers: take evaluation batches from the queue, run the engine, write results, heartbeat.

`process_one` has explicit outcomes: done -> result written and acknowledged; bad input (`InvalidRequest`: an
unknown verbalizer word, a context too long, a malformed candidate, ...) -> an error result, since retrying cannot
help;
anything else -> the traceback is logged and the batch is handed back for a retry, dead-lettered after
`max_deliveries`. A worker that dies mid-batch leaves it unacknowledged; another worker reclaims it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import asdict

from nograd.clients.protocol import Evaluator
from nograd.clients.types import InvalidRequest, ModelInfo

from .queue import BatchQueue, BatchResult, Delivery
from .queue.wire import decode_context, decode_work, encode_result

log = logging.getLogger("nograd.worker")


class Worker:
    """Serves `engines` (model name -> `Evaluator`, built by `nograd.engine.build_engine`), one batch at a time.

    Args:
        queue: the batch queue.
        engines: models this worker serves; it only takes batches for these.
        worker_id: unique name (default: host-pid-random).
        heartbeat: seconds between heartbeats; a worker is listed as live for 3 heartbeats.
        poll: seconds a `take` blocks.
        context_cache: how many job contexts (task data) to keep.
    """

    def __init__(
        self,
        queue: BatchQueue,
        engines: dict[str, Evaluator],
        *,
        worker_id: str | None = None,
        heartbeat: float = 2.0,
        poll: float = 1.0,
        context_cache: int = 64,
        heartbeat_file: str | None = None,
    ):
        self.queue, self.engines = queue, dict(engines)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.heartbeat_every, self.poll = heartbeat, poll
        self.heartbeat_file = heartbeat_file  # touched after each heartbeat the broker took (container healthcheck)
        self._contexts: OrderedDict = OrderedDict()
        self._context_cache = context_cache
        self.batches_done = 0
        self.errors = 0
        self.busy_seconds = 0.0
        self.current: str | None = None
        self.started_at = time.time()
        self.infos: dict[str, ModelInfo] = {name: engine.describe() for name, engine in self.engines.items()}

    def status(self) -> dict:
        return {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": {name: asdict(info) for name, info in self.infos.items()},
            "devices": sorted({info.device for info in self.infos.values()}),
            "batches_done": self.batches_done,
            "errors": self.errors,
            "busy_seconds": self.busy_seconds,
            "current": self.current,
            "started_at": self.started_at,
            "last_heartbeat": time.time(),
        }

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.queue.heartbeat(self.status(), ttl=3 * self.heartbeat_every)
                if self.heartbeat_file:
                    with open(self.heartbeat_file, "a"):
                        os.utime(self.heartbeat_file)
            except Exception:  # a broker outage must not kill the worker; the next beat retries
                log.warning("heartbeat failed", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), self.heartbeat_every)
            except TimeoutError:
                pass

    async def run(self, stop: asyncio.Event) -> None:
        """Take and process batches until `stop` is set; the batch in progress is finished first."""
        beats = asyncio.create_task(self._heartbeats(stop))
        log.info("worker %s serving %s", self.id, ", ".join(self.engines))
        try:
            while not stop.is_set():
                try:
                    delivery = await self.queue.take(self.id, list(self.engines), timeout=self.poll)
                except Exception:
                    log.warning("take failed; retrying", exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                if delivery is not None:
                    await self.process_one(delivery)
        finally:
            stop.set()
            await beats
            log.info("worker %s stopped after %d batches", self.id, self.batches_done)

    async def _context(self, job_id: str, key: str):
        cache_key = (job_id, key)
        if cache_key in self._contexts:
            self._contexts.move_to_end(cache_key)
            return self._contexts[cache_key]
        data = await self.queue.get_context(job_id, key)
        if data is None:
            raise LookupError(f"the task data of job {job_id} are not in the queue (job finished or broker reset)")
        value = decode_context(data)
        self._contexts[cache_key] = value
        while len(self._contexts) > self._context_cache:
            self._contexts.popitem(last=False)
        return value

    async def process_one(self, delivery: Delivery) -> str:
        """Returns the outcome: 'done', 'rejected' (bad input) or 'retry' / 'dead' (unexpected error)."""
        batch = delivery.batch
        self.current = f"{batch.job_id}/{batch.generation}"
        if delivery.deliveries > 1:
            log.info(
                "batch %s of job %s redelivered (delivery %d): its previous worker died or stalled",
                batch.id,
                batch.job_id,
                delivery.deliveries,
            )
        started = time.perf_counter()
        try:
            task, examples = await self._context(batch.job_id, batch.context)
            request = decode_work(batch.work, task, examples)
            result = await asyncio.to_thread(self.engines[batch.model].evaluate, request)
            seconds = time.perf_counter() - started
            await self.queue.finish(
                delivery,
                BatchResult(batch_id=batch.id, ok=True, data=encode_result(result), worker=self.id, seconds=seconds),
            )
            self.batches_done += 1
            return "done"
        except InvalidRequest as exc:  # the request cannot be scored as sent: final
            self.errors += 1
            log.info("batch %s of job %s rejected: %s", batch.id, batch.job_id, exc)
            await self.queue.finish(
                delivery, BatchResult(batch_id=batch.id, ok=False, error=str(exc), rejected=True, worker=self.id)
            )
            return "rejected"
        except Exception as exc:
            self.errors += 1
            log.error("batch %s of job %s failed:\n%s", batch.id, batch.job_id, traceback.format_exc())
            requeued = await self.queue.retry(delivery, f"{type(exc).__name__}: {exc}")
            return "retry" if requeued else "dead"
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.current = None
