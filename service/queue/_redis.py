"""`BatchQueue` on Redis Streams: one stream per model, one consumer group of workers.

Entries are XACKed and XDELed only after the batch's result is written (HSETNX: the first result wins), so a
stream's length is the number of batches waiting or in progress. A worker that dies leaves its entry pending under
its consumer name, which is its heartbeat id: as soon as that heartbeat key expires (3 heartbeats) or the worker
`leave`s, the next `take` of any other worker XCLAIMs the entry. Entries of live consumers are XAUTOCLAIMed only
once idle for longer than `claim_idle` (a worker alive but stalled). Every takeover counts as a delivery: an entry
delivered or retried `max_deliveries` times goes to the dead-letter stream with its last error, and the job gets
an error result, so a batch that kills every worker it reaches ends instead of going round forever.

Every Redis call retries connection errors with backoff (a Redis restart is survivable); `epoch` counts the
connection failures seen so callers can resubmit work a data-losing restart may have dropped. `bounded(seconds)`
gives request paths a handle on the same connections whose calls give up after `seconds` instead.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._base import Batch, BatchQueue, BatchResult, Delivery, QueueError, dead_letter_record, dead_letter_result

GROUP = "workers"


def stream_key(model: str, namespace: str = "nograd") -> str:
    """The stream of `model`'s batches, as `RedisQueue(namespace=namespace)` names it (autoscalers watch it)."""
    return f"{namespace}:q:{model}"


_SKIPPED = object()  # _take dropped a malformed entry: read again
RESULT_TTL = 7 * 24 * 3600
DEAD_MAXLEN = 10_000


class RedisQueue(BatchQueue):
    """Args:
    url: redis:// URL.
    namespace: key prefix (lets tests and deployments share one Redis).
    claim_idle: seconds after which another worker may take over an unacknowledged batch; set it to a few
        batch times.
    max_deliveries: deliveries + error retries before a batch is dead-lettered.
    retry_for: seconds to keep retrying a Redis call through connection errors before raising QueueError.
    dead_grace: seconds an entry of a consumer without a live heartbeat stays idle before it is taken over (at
        most `claim_idle`; covers a worker between its first `take` and its first heartbeat).
    call_timeout: seconds after which any call raises QueueError, whatever Redis does (None: no bound; see
        `bounded`).
    client: a `redis.asyncio.Redis` to share (then `close` leaves it open); default: one for `url`.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "nograd",
        claim_idle: float = 60.0,
        max_deliveries: int = 3,
        retry_for: float = 120.0,
        dead_grace: float = 1.0,
        call_timeout: float | None = None,
        client: aioredis.Redis | None = None,
    ):
        self.url, self.namespace = url, namespace
        self.claim_idle, self.max_deliveries, self.retry_for = claim_idle, max_deliveries, retry_for
        self.dead_grace, self.call_timeout = min(dead_grace, claim_idle), call_timeout
        self._owns_client = client is None
        self.redis = client or aioredis.from_url(
            url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=10
        )
        self.epoch = 0
        self._groups: set[str] = set()

    def bounded(self, seconds: float) -> RedisQueue:
        """The same queue and connections; every call raises QueueError after `seconds` (Redis down or hung)."""
        return RedisQueue(
            self.url,
            namespace=self.namespace,
            claim_idle=self.claim_idle,
            max_deliveries=self.max_deliveries,
            retry_for=seconds,
            dead_grace=self.dead_grace,
            call_timeout=seconds,
            client=self.redis,
        )

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    async def _call(self, fn):
        if self.call_timeout is None:
            return await self._retrying(fn)
        try:
            async with asyncio.timeout(self.call_timeout):
                return await self._retrying(fn)
        except TimeoutError as exc:  # only asyncio.timeout raises the builtin; redis-py has its own TimeoutError
            self.epoch += 1
            raise QueueError(f"Redis at {self._safe_url()} did not answer within {self.call_timeout:g} s") from exc

    async def _retrying(self, fn):
        delay, deadline = 0.05, time.monotonic() + self.retry_for
        while True:
            try:
                return await fn()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.epoch += 1
                self._groups.clear()
                if time.monotonic() > deadline:
                    raise QueueError(
                        f"Redis at {self._safe_url()} unreachable for {self.retry_for:.0f} s: {exc}"
                    ) from exc
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)

    def _safe_url(self) -> str:
        kw = self.redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"  # never the password

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    # ---------------------------------------------------------------- runner side
    async def put_context(self, job_id: str, key: str, data: bytes) -> None:
        await self._call(lambda: self.redis.set(self._key("ctx", job_id, key), data, ex=RESULT_TTL))

    async def get_context(self, job_id: str, key: str) -> bytes | None:
        return await self._call(lambda: self.redis.get(self._key("ctx", job_id, key)))

    async def submit(self, batches: list[Batch]) -> None:
        async def go():
            for batch in batches:
                if await self.redis.hexists(self._key("res", batch.job_id), batch.id):
                    continue
                stream = self._key("q", batch.model)
                await self._ensure_group(stream)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.sadd(self._key("models"), batch.model)
                    pipe.xadd(stream, {"batch": batch.to_json()})
                    await pipe.execute()

        await self._call(go)

    async def wait(self, job_id: str, batch_ids: list[str], timeout: float | None = None) -> dict[str, BatchResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        results_key, note_key = self._key("res", job_id), self._key("note", job_id)
        while True:
            values = await self._call(lambda: self.redis.hmget(results_key, batch_ids))
            if all(v is not None for v in values):
                # A job has one evaluation in flight: the notifications left over are all about this one.
                await self._call(lambda: self.redis.delete(note_key))
                return {i: BatchResult.from_json(v) for i, v in zip(batch_ids, values)}
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{sum(v is None for v in values)} of {len(batch_ids)} batches unfinished")
            # A notification wakes us early; the timeout bounds the wait if one is lost.
            wait = max(0.01, min(1.0, remaining))
            await self._call(lambda wait=wait: self.redis.blpop([note_key], timeout=wait))

    async def forget_job(self, job_id: str) -> None:
        async def go():
            keys = [self._key("res", job_id), self._key("note", job_id)]
            async for key in self.redis.scan_iter(match=self._key("ctx", job_id, "*"), count=500):
                keys.append(key)
            await self.redis.delete(*keys)

        await self._call(go)

    # ---------------------------------------------------------------- worker side
    async def take(self, consumer: str, models: list[str], timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while True:
            delivery = await self._call(lambda: self._take(consumer, models, max(0.001, deadline - time.monotonic())))
            if delivery is not _SKIPPED:
                return delivery
            if time.monotonic() >= deadline:
                return None

    async def _take(self, consumer: str, models: list[str], timeout: float) -> Delivery | None:
        streams = [self._key("q", m) for m in models]
        for stream in streams:
            await self._ensure_group(stream)
        for stream in streams:
            delivery = await self._reclaim(stream, consumer)
            if delivery is not None:
                return delivery
        try:
            response = await self.redis.xreadgroup(
                GROUP, consumer, dict.fromkeys(streams, ">"), count=1, block=max(1, int(timeout * 1000))
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the broker lost its data (restart without persistence)
                self._groups.clear()
                return None
            raise
        for stream, entries in response or []:
            for entry_id, fields in entries:
                stream = stream.decode() if isinstance(stream, bytes) else stream
                batch = await self._decode(stream, entry_id, fields)
                return _SKIPPED if batch is None else Delivery(batch=batch, handle=_handle(stream, entry_id))
        return None

    async def _decode(self, stream: str, entry_id, fields) -> Batch | None:
        """The entry's batch; a malformed entry (not written by a runner) is dead-lettered, never retried."""
        try:
            return Batch.from_json(fields[b"batch"])
        except Exception as exc:
            record = {
                "entry": str(entry_id),
                "stream": stream,
                "error": f"malformed entry: {exc!r}"[:500],
                "at": time.time(),
            }
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self._key("dead"), {"record": json.dumps(record)}, maxlen=DEAD_MAXLEN, approximate=True)
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
            return None

    async def _reclaim(self, stream: str, consumer: str) -> Delivery | None:
        """Take over one entry left unacknowledged by a consumer whose heartbeat is gone (dead: at once) or by
        any other consumer for longer than `claim_idle` (alive but stalled)."""
        while True:
            orphan = await self._orphan(stream, consumer)
            if orphan is None:
                break
            delivery = await self._taken_over(stream, consumer, *orphan)
            if delivery is not None:
                return delivery
        while True:
            _, claimed, *_ = await self.redis.xautoclaim(
                stream, GROUP, consumer, min_idle_time=int(self.claim_idle * 1000), start_id="0-0", count=1
            )
            if not claimed:
                return None
            delivery = await self._taken_over(stream, consumer, *claimed[0])
            if delivery is not None:
                return delivery

    async def _orphan(self, stream: str, consumer: str) -> tuple | None:
        """XCLAIM one entry pending under a consumer that has no live heartbeat key; (entry id, fields) or None.
        XCLAIM's idle-time condition makes the takeover exclusive when several workers race for it."""
        summary = await self.redis.xpending(stream, GROUP)
        names = [_text(c["name"]) for c in summary.get("consumers") or [] if int(c["pending"]) > 0]
        names = [n for n in names if n != consumer]
        if not names:
            return None
        alive = await self.redis.mget([self._key("worker", n) for n in names])
        idle = int(self.dead_grace * 1000)
        for name, beat in zip(names, alive):
            if beat is not None:
                continue
            pending = await self.redis.xpending_range(stream, GROUP, "-", "+", 1, consumername=name, idle=idle)
            if not pending:
                continue
            entry_id = pending[0]["message_id"]
            claimed = await self.redis.xclaim(stream, GROUP, consumer, min_idle_time=idle, message_ids=[entry_id])
            if claimed:  # else deleted meanwhile (XCLAIM drops it from the pending list) or another worker won it
                return claimed[0]
        return None

    async def _taken_over(self, stream: str, consumer: str, entry_id, fields) -> Delivery | None:
        """A claimed entry as a delivery; None when it was skipped (deleted, malformed, or dead-lettered after
        too many deliveries)."""
        if not fields:  # deleted while pending
            await self.redis.xack(stream, GROUP, entry_id)
            return None
        batch = await self._decode(stream, entry_id, fields)
        if batch is None:
            return None
        info = await self.redis.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
        deliveries = int(info[0]["times_delivered"]) if info else 2
        delivery = Delivery(batch=batch, handle=_handle(stream, entry_id), deliveries=deliveries)
        if batch.attempts + deliveries > self.max_deliveries:
            await self._dead_letter(
                Delivery(batch=batch, handle=delivery.handle, deliveries=deliveries - 1),  # the ones that failed
                f"the worker died or stalled while processing it ({deliveries - 1} times; a batch that kills "
                "every worker it reaches, e.g. out of memory, ends here: see the workers' logs)",
                consumer,
            )
            return None
        return delivery

    async def finish(self, delivery: Delivery, result: BatchResult) -> None:
        batch = delivery.batch
        stream, entry_id = _unhandle(delivery.handle)

        async def go():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._key("res", batch.job_id), batch.id, result.to_json())
                pipe.expire(self._key("res", batch.job_id), RESULT_TTL)
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                pipe.rpush(self._key("note", batch.job_id), batch.id)
                pipe.expire(self._key("note", batch.job_id), 3600)
                await pipe.execute()

        await self._call(go)

    async def retry(self, delivery: Delivery, error: str) -> bool:
        batch = delivery.batch
        if batch.attempts + delivery.deliveries >= self.max_deliveries:
            await self._call(lambda: self._dead_letter(delivery, error, ""))
            return False
        stream, entry_id = _unhandle(delivery.handle)
        again = Batch(**{**batch.__dict__, "attempts": batch.attempts + 1})

        async def go():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(stream, {"batch": again.to_json()})
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()

        await self._call(go)
        return True

    async def _dead_letter(self, delivery: Delivery, error: str, worker: str) -> None:
        record = json.dumps(dead_letter_record(delivery.batch, error))
        await self.redis.xadd(self._key("dead"), {"record": record}, maxlen=DEAD_MAXLEN, approximate=True)
        await self.finish(delivery, dead_letter_result(delivery, error, worker))

    async def heartbeat(self, worker: dict, ttl: float) -> None:
        async def go():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key("worker", worker["id"]), json.dumps(worker), px=max(1, int(ttl * 1000)))
                pipe.sadd(self._key("workers"), worker["id"])
                await pipe.execute()

        await self._call(go)

    async def leave(self, worker_id: str) -> None:
        async def go():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._key("worker", worker_id))
                pipe.srem(self._key("workers"), worker_id)
                await pipe.execute()

        await self._call(go)

    async def workers(self) -> list[dict]:
        async def go():
            ids = sorted(v.decode() for v in await self.redis.smembers(self._key("workers")))
            if not ids:
                return []
            values = await self.redis.mget([self._key("worker", i) for i in ids])
            gone = [i for i, v in zip(ids, values) if v is None]
            if gone:
                await self.redis.srem(self._key("workers"), *gone)
            return [json.loads(v) for v in values if v is not None]

        return await self._call(go)

    async def depth(self) -> dict[str, int]:
        async def go():
            models = sorted(v.decode() for v in await self.redis.smembers(self._key("models")))
            return {m: int(await self.redis.xlen(self._key("q", m))) for m in models}

        return await self._call(go)

    async def dead_letters(self, limit: int = 100) -> list[dict]:
        entries = await self._call(lambda: self.redis.xrevrange(self._key("dead"), count=limit))
        return [json.loads(fields[b"record"]) for _, fields in reversed(entries)]

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _handle(stream: str, entry_id) -> str:
    return f"{stream}|{entry_id.decode() if isinstance(entry_id, bytes) else entry_id}"


def _unhandle(handle: str) -> tuple[str, str]:
    stream, entry_id = handle.rsplit("|", 1)
    return stream, entry_id
