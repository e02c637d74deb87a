"""Model workers: take evaluation batches from the queue, run the engine, write results, heartbeat.

`process_one` has explicit outcomes: done -> result written and acknowledged; bad input (`InvalidRequest`: an
unknown verbalizer word, a context too long, a malformed candidate, ...) -> an error result, since retrying cannot
help;
anything else -> the traceback is logged and the batch is handed back for a retry, dead-lettered after
`max_deliveries`. A worker that dies mid-batch leaves it unacknowledged; another worker reclaims it as soon as the
dead worker's heartbeat expires. Inspections (a prompt's materialized tensor or nearest tokens, `queue.wire`) go
the same way and have the same outcomes.

Stopping never waits on the broker for long: a `take` or heartbeat in progress is abandoned at once, and writing the
result of the batch in progress gets `stop_grace` seconds. A batch whose outcome the queue did not take stays
pending; the worker `leave`s the queue on its way out, so another worker takes the batch over at once.
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

from . import logs
from .metrics import WorkerMetrics
from .queue import Batch, BatchQueue, BatchResult, Delivery, QueueError
from .queue.wire import (
    MAX_PROMPT_BYTES,
    decode_context,
    decode_inspect,
    decode_work,
    encode_materialized,
    encode_neighbors,
    encode_result,
    inspect_kind,
)

log = logging.getLogger("nograd.worker")


class ContextGone(LookupError):
    """A batch's task data are no longer in the queue: its job ended (finished or cancelled while the batch waited)
    or the broker lost its data. Final: no other worker can score it either."""


class _Stopping(Exception):
    """The worker is stopping and a queue call did not finish within its grace."""


def engines_from_settings(settings, build=None, on_loaded=None) -> dict[str, Evaluator]:
    """The engines of `settings.models` as a worker serves them (dtype, device, memory caps from `settings`);
    `build` is `nograd.engine.build_engine` unless given. `on_loaded(name, seconds)`, if given, hears how long
    each took to load."""
    if build is None:
        from nograd.engine import build_engine as build  # torch loads only for a process that serves a model
    engines = {}
    for name in settings.models:
        started = time.perf_counter()
        engines[name] = build(
            name,
            dtype=settings.dtype,
            device=settings.device,
            memory_cap_mb=settings.memory_cap_mb,
            memory_budget_mb=settings.worker_memory_mb,
            projection_cache_mb=settings.projection_cache_mb,
        )
        if on_loaded is not None:
            on_loaded(name, time.perf_counter() - started)
    return engines


class Worker:
    """Serves `engines` (model name -> `Evaluator`, built by `nograd.engine.build_engine`), one batch at a time.

    Args:
        queue: the batch queue.
        engines: models this worker serves; it only takes batches for these.
        worker_id: unique name (default: host-pid-random).
        heartbeat: seconds between heartbeats; a worker is listed as live for 3 heartbeats.
        poll: seconds a `take` blocks.
        context_cache: how many job contexts (task data) to keep.
        heartbeat_file: touched after each heartbeat the broker took (a container healthcheck reads it).
        stop_grace: seconds a queue call (writing the last result) may still take once the worker is stopping.
        max_prompt_bytes: the largest materialized prompt sent back for an inspection (larger: a refusal).
        metrics: where finished batches are counted and timed (`nograd_worker_*`), if anywhere.
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
        stop_grace: float = 2.0,
        max_prompt_bytes: int = MAX_PROMPT_BYTES,
        metrics: WorkerMetrics | None = None,
    ):
        self.queue, self.engines = queue, dict(engines)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.heartbeat_every, self.poll = heartbeat, poll
        self.heartbeat_file, self.stop_grace = heartbeat_file, stop_grace
        self.max_prompt_bytes = max_prompt_bytes
        self._stop: asyncio.Event | None = None  # set by `run`
        self._contexts: OrderedDict = OrderedDict()
        self._context_cache = context_cache
        self.batches_done = 0
        self.candidates_done = 0  # model calls scored: with busy_seconds, the speed the Submit form estimates from
        self.errors = 0
        self.busy_seconds = 0.0
        self.current: str | None = None
        self.started_at = time.time()
        self.infos: dict[str, ModelInfo] = {name: engine.describe() for name, engine in self.engines.items()}
        self.metrics = metrics
        if metrics is not None:
            metrics.serve(self.engines, {info.device for info in self.infos.values()})

    def status(self) -> dict:
        return {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": {name: asdict(info) for name, info in self.infos.items()},
            "devices": sorted({info.device for info in self.infos.values()}),
            "batches_done": self.batches_done,
            "candidates_done": self.candidates_done,
            "errors": self.errors,
            "busy_seconds": self.busy_seconds,
            "current": self.current,
            "started_at": self.started_at,
            "last_heartbeat": time.time(),
        }

    async def _queue_io(self, awaitable, grace: float | None = None):
        """`await awaitable` (a queue call); once the worker is stopping, it gets `grace` (default `stop_grace`)
        more seconds, then it is cancelled and `_Stopping` raised. Without `run`, a plain await."""
        if self._stop is None:
            return await awaitable
        call, stopped = asyncio.ensure_future(awaitable), asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                await asyncio.wait({call}, timeout=self.stop_grace if grace is None else grace)
            if not call.done():
                raise _Stopping
            return call.result()
        finally:
            stopped.cancel()
            call.cancel()  # no-op when it finished; else the broker call is abandoned

    async def _beat(self) -> None:
        try:
            await self._queue_io(self.queue.heartbeat(self.status(), ttl=3 * self.heartbeat_every), grace=0)
            if self.heartbeat_file:
                with open(self.heartbeat_file, "a"):
                    os.utime(self.heartbeat_file)
        except _Stopping:
            pass
        except Exception:  # a broker outage must not kill the worker; the next beat retries
            log.warning("heartbeat failed", exc_info=True)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not await _stopped_within(stop, self.heartbeat_every):
            await self._beat()

    async def run(self, stop: asyncio.Event) -> None:
        """Take and process batches until `stop` is set; the batch in progress is finished first, then the worker
        leaves the queue (its heartbeat goes), within about `stop_grace` seconds whatever the broker does."""
        self._stop = stop
        log.info("worker %s serving %s", self.id, ", ".join(self.engines))
        # Heartbeat before the first take: a consumer without a live heartbeat is taken for dead and its
        # batches are taken over.
        await self._beat()
        beats = asyncio.create_task(self._heartbeats(stop))
        try:
            while not stop.is_set():
                try:
                    delivery = await self._queue_io(self.queue.take(self.id, list(self.engines), self.poll), grace=0)
                except _Stopping:
                    break
                except Exception:
                    log.warning("take failed; retrying", exc_info=True)
                    await _stopped_within(stop, 1.0)
                    continue
                if delivery is not None:
                    await self.process_one(delivery)
        finally:
            stop.set()
            await beats
            try:  # best effort, so briefly: a broker that is away gets a second
                await asyncio.wait_for(self.queue.leave(self.id), min(1.0, self.stop_grace))
            except Exception as exc:  # its heartbeat then expires on its own
                log.warning("worker %s could not leave the queue: %r", self.id, exc)
            log.info("worker %s stopped after %d batches", self.id, self.batches_done)

    async def _context(self, job_id: str, key: str):
        cache_key = (job_id, key)
        if cache_key in self._contexts:
            self._contexts.move_to_end(cache_key)
            return self._contexts[cache_key]
        data = await self._queue_io(self.queue.get_context(job_id, key))
        if data is None:
            raise ContextGone(f"the task data of job {job_id} are not in the queue (job ended, or broker reset)")
        value = decode_context(data)
        self._contexts[cache_key] = value
        while len(self._contexts) > self._context_cache:
            self._contexts.popitem(last=False)
        return value

    async def process_one(self, delivery: Delivery) -> str:
        """Returns the outcome: 'done', 'rejected' (bad input), 'retry' / 'dead' (unexpected error) or 'abandoned'
        (the queue did not take the outcome: the worker is stopping, or the broker stayed away; the batch stays
        pending and another worker takes it over). What it logs carries the batch's job id."""
        with logs.bound(job_id=delivery.batch.job_id):
            return await self._process(delivery)

    async def _process(self, delivery: Delivery) -> str:
        batch = delivery.batch
        self.current = f"{batch.job_id}/{inspect_kind(batch.work) or batch.generation}"
        if delivery.deliveries > 1:
            log.info(
                "batch %s of job %s redelivered (delivery %d): its previous worker died or stalled",
                batch.id,
                batch.job_id,
                delivery.deliveries,
            )
        started = time.perf_counter()
        try:
            try:
                if inspect_kind(batch.work) is None:
                    data, candidates = await self._evaluate(batch)
                else:
                    data, candidates = await self._inspect(batch), 0
                seconds = time.perf_counter() - started
                outcome = "done"
                write = self.queue.finish(
                    delivery, BatchResult(batch_id=batch.id, ok=True, data=data, worker=self.id, seconds=seconds)
                )
            except (_Stopping, QueueError):
                raise
            except ContextGone as exc:  # expected after a cancel: no traceback, no retries
                log.info("batch %s of job %s dropped: %s", batch.id, batch.job_id, exc)
                outcome = "rejected"
                write = self.queue.finish(
                    delivery, BatchResult(batch_id=batch.id, ok=False, error=str(exc), rejected=True, worker=self.id)
                )
            except InvalidRequest as exc:  # the request cannot be scored as sent: final
                self.errors += 1
                log.info("batch %s of job %s rejected: %s", batch.id, batch.job_id, exc)
                outcome = "rejected"
                write = self.queue.finish(
                    delivery, BatchResult(batch_id=batch.id, ok=False, error=str(exc), rejected=True, worker=self.id)
                )
            except Exception as exc:
                self.errors += 1
                log.error("batch %s of job %s failed:\n%s", batch.id, batch.job_id, traceback.format_exc())
                outcome = None  # retry, or dead when the queue dead-letters it
                write = self.queue.retry(delivery, f"{type(exc).__name__}: {exc}")
            # One write of the outcome, whatever it is: bounded like every queue call while the worker stops.
            written = await self._queue_io(write)
        except (_Stopping, QueueError) as exc:
            return self._abandoned(delivery, exc)
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.current = None
        if outcome == "done":
            self.batches_done += 1
            self.candidates_done += candidates
            if self.metrics is not None:
                self.metrics.on_batch(batch.model, seconds)
        return outcome or ("retry" if written else "dead")

    async def _evaluate(self, batch: Batch) -> tuple[dict, int]:
        """An evaluation batch's result (`wire.encode_result`) and how many candidates it scored."""
        task, examples = await self._context(batch.job_id, batch.context)
        request = decode_work(batch.work, task, examples)
        result = await asyncio.to_thread(self.engines[batch.model].evaluate, request)
        return encode_result(result), len(result.loss)

    async def _inspect(self, batch: Batch) -> dict:
        """An inspection's answer: the engine's prompt tensor or virtual tokens (refused past `max_prompt_bytes`) or
        nearest tokens.
        Bad input raises InvalidRequest, like an evaluation's."""
        asked = decode_inspect(batch.work)
        engine = self.engines[batch.model]
        if asked.kind == "materialize":
            tensor = await asyncio.to_thread(engine.materialize, asked.spec, asked.x)
            return encode_materialized(tensor, self.max_prompt_bytes)
        if asked.kind == "virtual_tokens":
            tensor = await asyncio.to_thread(engine.virtual_tokens, asked.task, asked.spec, asked.x)
            return encode_materialized(tensor, self.max_prompt_bytes)
        return encode_neighbors(await asyncio.to_thread(engine.nearest_tokens, asked.spec, asked.x, asked.k))

    def _abandoned(self, delivery: Delivery, exc: Exception) -> str:
        reason = "the worker is stopping" if isinstance(exc, _Stopping) else str(exc)
        log.warning(
            "batch %s of job %s left unacknowledged (%s); another worker takes it over",
            delivery.batch.id,
            delivery.batch.job_id,
            reason,
        )
        return "abandoned"


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stop`; whether it is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    return stop.is_set()
