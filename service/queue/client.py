"""The queue-backed endpoint: `ModelClient` over a `BatchQueue` and the workers behind it.

A population is split into batches of at most `batch_size` candidates, so several workers can share one
generation. The job's task data go to the queue once per example set (content-addressed); each batch carries
only the candidates. Results are idempotent by batch id, so resubmitting after a broker restart is safe.
`materialize` and `nearest_tokens` go the same way as one inspection batch each (`queue.wire`): a worker answers
from its engine, so a service job gets the prompt tensor and nearest tokens a local run gets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType

import numpy as np

from nograd.clients.types import (
    EvalRequest,
    EvalResult,
    InvalidRequest,
    ModelInfo,
    PromptSpec,
    TaskSpec,
    TokenNeighbor,
)

from ._base import Batch, BatchQueue, BatchResult
from .wire import (
    INSPECT_CONTEXT,
    batch_id,
    decode_materialized,
    decode_neighbors,
    decode_result,
    digest,
    encode_context,
    encode_inspect,
    encode_work,
    merge_results,
)

log = logging.getLogger("nograd.queue_client")


class EvaluationError(RuntimeError):
    """A batch failed for good on the workers (dead-lettered after repeated errors); the message says why. A batch
    the workers reject as bad input raises `InvalidRequest` instead."""


class QueueClient:
    """Args:
    queue: the batch queue.
    job_id: the job the batches belong to (results and contexts are scoped by it).
    model: the model name workers register under.
    info: the model's `ModelInfo` (from a live worker's heartbeat).
    batch_size: most candidates per batch (None: a whole population per batch).
    on_batch: optional callback(seconds, n_batches) after each evaluation (metrics).
    check_every: seconds between checks for a broker restart while waiting (then the work is resubmitted).
    gate: a factory of async context managers entered around each evaluation (fair shares), or None.
    """

    usage = MappingProxyType({})  # this service's workers charge nothing

    def __init__(
        self,
        queue: BatchQueue,
        job_id: str,
        model: str,
        info: ModelInfo,
        *,
        batch_size: int | None = None,
        on_batch: Callable[[float, int], None] | None = None,
        check_every: float = 2.0,
        gate: Callable[[], AbstractAsyncContextManager] | None = None,
    ):
        self.queue, self.job_id, self.model, self.info = queue, job_id, model, info
        self.gate = gate  # entered around each evaluation (the runner's fair share of the workers)
        self.batch_size, self.on_batch, self.check_every = batch_size, on_batch, check_every
        self._contexts: dict[str, bytes] = {}

    async def describe(self) -> ModelInfo:
        return self.info

    async def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray | None:
        """The prompt tensor `x` stands for, built by a worker's engine (the same float32 array a local engine
        returns); None when the worker's engine has none or the tensor is over the queue's `MAX_PROMPT_BYTES` (a
        large deep prompt: logged with its size; the prompt file then keeps z only). Bad input raises
        InvalidRequest, a batch the workers failed on for good EvaluationError, as for `evaluate`."""
        tensor, refused = decode_materialized(await self._inspect(encode_inspect("materialize", spec, x)))
        if refused:
            log.warning("job %s: model %r: %s", self.job_id, self.model, refused)
        return tensor

    async def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> list[list[TokenNeighbor]] | None:
        """A worker's engine's nearest vocabulary tokens per position of the `cat`/`add` prompt `x` stands for
        (None: its engine cannot tell, e.g. the fake model); errors as for `materialize`."""
        return decode_neighbors(await self._inspect(encode_inspect("nearest_tokens", spec, x, k)))

    async def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray | None:
        """A worker's engine's virtual-token embeddings of `task` and the `cat`/`add` prompt `x` stands for (as a
        local engine returns them); None when refused for size (logged); errors as for `materialize`."""
        tensor, refused = decode_materialized(await self._inspect(encode_inspect("virtual_tokens", spec, x, task=task)))
        if refused:
            log.warning("job %s: model %r: %s", self.job_id, self.model, refused)
        return tensor

    async def aclose(self) -> None:
        return None

    def _split(self, request: EvalRequest) -> list[EvalRequest]:
        if (
            (request.z is None and request.texts is None)
            or self.batch_size is None
            or request.population <= self.batch_size
        ):
            return [request]
        return [request.part(i, i + self.batch_size) for i in range(0, request.population, self.batch_size)]

    async def _put_contexts(self) -> None:
        for key, data in self._contexts.items():
            await self.queue.put_context(self.job_id, key, data)

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        if self.gate is None:
            return await self._evaluate(request)
        async with self.gate():
            return await self._evaluate(request)

    async def _evaluate(self, request: EvalRequest) -> EvalResult:
        started = time.perf_counter()
        context = encode_context(request.task, request.examples)
        key = digest(context)
        if key not in self._contexts:
            self._contexts[key] = context
            await self.queue.put_context(self.job_id, key, context)
        batches = []
        for part in self._split(request):
            work = encode_work(part)
            batches.append(
                Batch(
                    id=batch_id(key, work),
                    job_id=self.job_id,
                    generation=request.generation,
                    model=self.model,
                    context=key,
                    work=work,
                )
            )
        results = await self._run(batches)
        merged = merge_results([decode_result(results[b.id].data) for b in batches])
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started, len(batches))
        return merged

    async def _inspect(self, work: dict) -> dict:
        """A worker's answer (`BatchResult.data`) to one inspection batch, under the same fair-share gate as an
        evaluation (it takes a worker's turn)."""
        batch = Batch(
            id=batch_id(INSPECT_CONTEXT, work),
            job_id=self.job_id,
            generation=-1,  # not part of a generation
            model=self.model,
            context=INSPECT_CONTEXT,
            work=work,
        )
        if self.gate is None:
            results = await self._run([batch])
        else:
            async with self.gate():
                results = await self._run([batch])
        return results[batch.id].data

    async def _run(self, batches: list[Batch]) -> dict[str, BatchResult]:
        """Submit `batches` and wait for all their results, resubmitting (with the job's contexts) when the broker
        dropped connections meanwhile. Raises InvalidRequest when the workers rejected one (bad input),
        EvaluationError when one failed for good; every result returned is ok."""
        ids = [b.id for b in batches]
        epoch = self.queue.epoch
        await self.queue.submit(batches)
        while True:
            try:
                results = await self.queue.wait(self.job_id, ids, timeout=self.check_every)
                break
            except TimeoutError:
                if self.queue.epoch != epoch:  # the broker dropped connections: it may have lost our data; resubmit
                    epoch = self.queue.epoch
                    log.warning(
                        "job %s: the broker connection dropped; resubmitting %d batches (results are idempotent)",
                        self.job_id,
                        len(batches),
                    )
                    await self._put_contexts()
                    await self.queue.submit(batches)
        failed = [r for r in results.values() if not r.ok]
        for result in failed:
            if result.rejected:
                raise InvalidRequest(f"model {self.model!r}: {result.error}")
        if failed:
            raise EvaluationError(f"model {self.model!r}: {failed[0].error}")
        return results
