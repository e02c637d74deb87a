"""The evaluation-batch queue: one interface, an in-process implementation and a Redis Streams one.

Runner side: `put_context` (task data, once per job and example set), `submit` (batches), `wait` (results).
Worker side: `take` (a delivery for one of its models), `finish` (idempotent result write, then ack), `retry`
(hand the batch back after an error), `heartbeat`, `leave`. A worker's consumer name in `take` is its heartbeat
`id`: a batch held by a consumer whose heartbeat expired is taken over at once. A batch's id is the hash of its
content (see `queue.wire`), so the same batch submitted twice, or delivered twice, produces one result.
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import asdict, dataclass, field


class QueueError(RuntimeError):
    """The queue cannot serve a request (e.g. the broker is unreachable after retries)."""


class _Json:
    """Compact JSON round trip of a flat dataclass."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes):
        return cls(**json.loads(data))


@dataclass
class Batch(_Json):
    """One evaluation batch: a population (or a chunk of one) of one job, for one model."""

    id: str
    job_id: str
    generation: int
    model: str
    context: str  # context key: the job's task data travel once, not with every batch
    work: dict  # wire.encode_work(...)
    attempts: int = 0  # errors so far (workers retry a failed batch until max_deliveries)
    enqueued_at: float = field(default_factory=time.time)


@dataclass
class BatchResult(_Json):
    """What a worker wrote for a batch: `data` (`queue.wire.encode_result`) or a final `error`; `rejected`: the
    error is the request's own (`InvalidRequest`), not a failure of the workers."""

    batch_id: str
    ok: bool
    data: dict | None = None
    error: str | None = None
    rejected: bool = False
    worker: str = ""
    seconds: float = 0.0
    finished_at: float = field(default_factory=time.time)


@dataclass
class Delivery:
    """A batch handed to one worker; `deliveries` counts how often it was handed out (crash redeliveries)."""

    batch: Batch
    handle: str  # implementation's receipt (stream entry id)
    deliveries: int = 1


class BatchQueue(abc.ABC):
    """Invariants: a result, once written for a batch id, never changes; `wait` returns only when every asked
    batch has a result (ok or error) or raises TimeoutError; nothing here knows about jobs beyond their ids."""

    max_deliveries: int = 3
    #: Connection failures seen so far; a change tells callers the broker may have lost their batches.
    epoch: int = 0

    # ---------------------------------------------------------------- runner side
    @abc.abstractmethod
    async def put_context(self, job_id: str, key: str, data: bytes) -> None:
        """Store a job's task data under `key` (idempotent)."""

    @abc.abstractmethod
    async def submit(self, batches: list[Batch]) -> None:
        """Enqueue batches that have no result yet."""

    @abc.abstractmethod
    async def wait(self, job_id: str, batch_ids: list[str], timeout: float | None = None) -> dict[str, BatchResult]:
        """Block until every batch has a result; TimeoutError after `timeout` seconds."""

    @abc.abstractmethod
    async def forget_job(self, job_id: str) -> None:
        """Drop a finished job's contexts and results."""

    # ---------------------------------------------------------------- worker side
    @abc.abstractmethod
    async def get_context(self, job_id: str, key: str) -> bytes | None:
        """A job's task data, or None when it is gone (job forgotten, broker data lost)."""

    @abc.abstractmethod
    async def take(self, consumer: str, models: list[str], timeout: float) -> Delivery | None:
        """The next batch for one of `models` (redelivering batches whose worker went silent), or None."""

    @abc.abstractmethod
    async def finish(self, delivery: Delivery, result: BatchResult) -> None:
        """Write the result (first write wins) and acknowledge the delivery."""

    @abc.abstractmethod
    async def retry(self, delivery: Delivery, error: str) -> bool:
        """Hand a batch back after an error. After `max_deliveries` attempts the batch is dead-lettered with
        `error` and gets an error result instead; returns True if it was re-queued."""

    @abc.abstractmethod
    async def heartbeat(self, worker: dict, ttl: float) -> None:
        """Publish a worker's status for `ttl` seconds."""

    @abc.abstractmethod
    async def workers(self) -> list[dict]:
        """Live workers (heartbeat within its ttl)."""

    @abc.abstractmethod
    async def depth(self) -> dict[str, int]:
        """Batches waiting or in progress, per model."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[dict]:
        """The most recent dead-lettered batches with their errors."""

    async def leave(self, worker_id: str) -> None:  # noqa: B027 (an optional hook: nothing to drop by default)
        """A worker stops: its heartbeat goes at once, so it leaves the live list and whatever it still holds is
        taken over without waiting for the heartbeat to expire."""

    def bounded(self, seconds: float) -> BatchQueue:
        """A handle on this queue whose calls raise `QueueError` after `seconds` instead of riding out a broker
        outage: for request paths (API routes, readiness) that must answer fast. Runners and workers keep the
        patient handle, which survives a broker restart. A queue that never waits on a broker returns itself."""
        return self

    async def close(self) -> None:  # noqa: B027 (an optional hook: queues without connections have nothing to do)
        """Release connections."""


def dead_letter_record(batch: Batch, error: str) -> dict:
    """What the dead-letter list keeps of a batch that failed for good."""
    return {
        "batch_id": batch.id,
        "job_id": batch.job_id,
        "generation": batch.generation,
        "model": batch.model,
        "error": error,
        "at": time.time(),
    }


def dead_letter_result(delivery: Delivery, error: str, worker: str) -> BatchResult:
    return BatchResult(
        batch_id=delivery.batch.id,
        ok=False,
        error=f"batch failed {delivery.batch.attempts + delivery.deliveries} times; last error: {error}",
        worker=worker,
    )
