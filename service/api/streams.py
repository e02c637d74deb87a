"""Jobs' event streams (`GET /v1/jobs/{id}/events`): one shared poll of the store per followed job, fanned out to
every stream that follows it, so a thousand open streams cost the database what one does.

Each stream replays the history after its Last-Event-ID once, then takes the shared updates: `generation` events
(id = generation; none is sent twice or skipped), `job` snapshots when the job changes, `end` when it is finished,
and a `: ping` comment every 15 s. Updates wait in a bounded queue per stream: a stream that falls that far
behind (its client reads slower than the job writes) is ended with a comment saying where to resume, never
buffered without bound. Streams end when the app starts shutting down (`app.state.stopping`).

Everything here runs on the app's event loop (no locks); the store is called in threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse

from ..store import TERMINAL, Store
from .errors import TooMany
from .schemas import JobPublic

log = logging.getLogger("nograd.api")

PING_SECONDS = 15.0
QUEUE_SIZE = 64  # polls' updates a stream may fall behind (about 30 s) before it is told to reconnect
REPLAY_CHUNK = 32  # history entries per write of a replay
RETRY_AFTER = 10  # seconds a tenant over its stream quota is asked to wait
_STOP, _BEHIND = object(), object()  # queue sentinels: the app is stopping / this stream fell behind


class _Slot:
    """One open stream counted against its tenant's quota; `release` is idempotent."""

    def __init__(self, streams: JobStreams, tenant: str):
        self.streams, self.tenant, self.released = streams, tenant, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.streams._release(self.tenant)


class _Poller:
    """The shared poll of one job: its subscribers' queues and how far it has read the job."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.subscribers: set[asyncio.Queue] = set()
        self.ready = asyncio.Event()  # `last_generation` is known: a stream may replay, then take updates
        self.last_generation = -1
        self.last_update: float | None = None
        self.task: asyncio.Task | None = None


class _Update:
    """One poll's news for every stream of a job, rendered once: new generations, the job's snapshot if it changed,
    `end` if it finished. A stream takes it as one chunk (one write per poll, however many generations)."""

    __slots__ = ("generations", "job", "end", "data")

    def __init__(self, generations: list[tuple[int, str]], job: tuple[float, str] | None, end: str | None):
        self.generations, self.job, self.end = generations, job, end
        parts = [text for _, text in generations] + [job[1] if job else "", end or ""]
        self.data = "".join(parts).encode()

    def for_stream(self, after: int, last_update: float) -> tuple[str | bytes, int, float]:
        """What a stream that sent generations up to `after` and the snapshot of `last_update` sends of this
        (usually all of it: the shared bytes); and its new `after` and `last_update`."""
        generations = [(g, text) for g, text in self.generations if g > after]  # not those in its replay
        job = self.job if self.job is not None and self.job[0] > last_update else None
        if generations:
            after = generations[-1][0]
        if job is not None:
            last_update = job[0]
        if len(generations) == len(self.generations) and job is self.job:
            return self.data, after, last_update
        return "".join([text for _, text in generations] + [job[1] if job else "", self.end or ""]), after, last_update


class EventStream(StreamingResponse):
    """A `text/event-stream` response that gives its quota slot back and closes its generator (unsubscribing it)
    however the response ends: finished, client gone, or cancelled."""

    media_type = "text/event-stream"

    def __init__(self, content, slot: _Slot):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.slot = slot

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
            try:
                await self.body_iterator.aclose()
            except RuntimeError:  # still running: it is being cancelled and cleans up itself
                pass


class JobStreams:
    """The per-app registry of followed jobs.

    Args:
        store: where jobs and their history are read.
        poll: seconds between two polls of a followed job.
        per_tenant: open streams one tenant may have on this API replica; more are refused with 429.
        stopping: set when the app starts shutting down: streams end, pollers stop.
        queue_size: updates one stream may fall behind.
    """

    def __init__(
        self,
        store: Store,
        *,
        poll: float = 0.5,
        per_tenant: int = 16,
        stopping: asyncio.Event | None = None,
        queue_size: int = QUEUE_SIZE,
        ping: float = PING_SECONDS,
    ):
        self.store, self.poll, self.per_tenant, self.stopping = store, poll, per_tenant, stopping
        self.queue_size, self.ping = queue_size, ping
        self.open_streams: dict[str, int] = {}
        self._pollers: dict[str, _Poller] = {}

    @property
    def closing(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def reserve(self, tenant: str) -> _Slot:
        """A stream slot for `tenant`. Raises `TooMany` when its quota is used up."""
        count = self.open_streams.get(tenant, 0)
        if count >= self.per_tenant:
            raise TooMany(
                f"event-stream quota: {count} streams are open, the most a tenant may have (tenant_streams, "
                f"NOGRAD_TENANT_STREAMS={self.per_tenant}); close one, or poll GET /v1/jobs/{{id}}/history?after=N",
                retry_after=RETRY_AFTER,
            )
        self.open_streams[tenant] = count + 1
        return _Slot(self, tenant)

    def _release(self, tenant: str) -> None:
        count = self.open_streams.get(tenant, 0) - 1
        if count > 0:
            self.open_streams[tenant] = count
        else:
            self.open_streams.pop(tenant, None)

    def response(self, job: dict, after: int, slot: _Slot) -> EventStream:
        """The stream of `job` (already authorized) from generation `after` on."""
        return EventStream(self._events(job, after, slot), slot)

    # ---------------------------------------------------------------- one stream
    async def _events(self, job: dict, after: int, slot: _Slot):
        job_id, queue, poller = job["id"], None, None
        try:
            if job["status"] not in TERMINAL and not self.closing:
                # Subscribed before the replay: an update the replay misses is already on its way to the queue.
                queue, poller = self._subscribe(job_id)
                await poller.ready.wait()
            replay = await asyncio.to_thread(self.store.history, job_id, after)
            for start in range(0, len(replay), REPLAY_CHUNK):
                yield "".join(_generation(entry) for entry in replay[start : start + REPLAY_CHUNK])
            if replay:
                after = replay[-1]["generation"]
            del replay
            last_update = job["updated_at"]
            yield _job(job)
            if job["status"] in TERMINAL:
                yield _end(job["status"])
                return
            if queue is None:
                return
            next_ping = time.monotonic() + self.ping
            while True:
                try:
                    async with asyncio.timeout(max(0.0, next_ping - time.monotonic())):
                        item = await queue.get()
                except TimeoutError:
                    next_ping = time.monotonic() + self.ping
                    yield ": ping\n\n"
                    continue
                if item is _STOP:
                    yield ": the server is shutting down; reconnect with Last-Event-ID to resume\n\n"
                    return
                if item is _BEHIND:
                    yield f": this stream fell behind; reconnect with Last-Event-ID: {after} to resume\n\n"
                    return
                data, after, last_update = item.for_stream(after, last_update)
                if data:
                    yield data
                if item.end:
                    return
        finally:
            if poller is not None:
                self._unsubscribe(poller, queue)
            slot.release()

    # ---------------------------------------------------------------- shared polls
    def _subscribe(self, job_id: str) -> tuple[asyncio.Queue, _Poller]:
        poller = self._pollers.get(job_id)
        if poller is None:
            poller = self._pollers[job_id] = _Poller(job_id)
            poller.task = asyncio.create_task(self._run(poller), name=f"events-{job_id}")
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        poller.subscribers.add(queue)
        return queue, poller

    def _unsubscribe(self, poller: _Poller, queue: asyncio.Queue) -> None:
        poller.subscribers.discard(queue)
        if not poller.subscribers and self._pollers.get(poller.job_id) is poller:
            del self._pollers[poller.job_id]
            if poller.task is not None:
                poller.task.cancel()

    async def _run(self, poller: _Poller) -> None:
        """Poll one job while it has subscribers: the newest generation once (where updates start), then the job
        and its new history every `poll` seconds, until it is finished or the app stops."""
        try:
            while not poller.ready.is_set():
                try:
                    poller.last_generation = await asyncio.to_thread(self.store.last_generation, poller.job_id)
                    poller.ready.set()
                except Exception:
                    log.warning("events of job %s: reading the store failed; retrying", poller.job_id, exc_info=True)
                    if await self._sleep():
                        return
            while poller.subscribers:
                try:
                    if self._poll_once(poller, await self._read(poller)):
                        return
                except Exception:
                    log.warning("events of job %s: reading the store failed; retrying", poller.job_id, exc_info=True)
                if await self._sleep():
                    return
        finally:
            if self.closing:
                for queue in list(poller.subscribers):
                    self._offer(poller, queue, _STOP)
            poller.ready.set()  # a stream still waiting for it goes on (and ends)
            if self._pollers.get(poller.job_id) is poller:
                del self._pollers[poller.job_id]

    async def _read(self, poller: _Poller) -> tuple[dict | None, list[dict]]:
        # The job before its history: once it reads finished, every entry it wrote is in the history read next.
        job = await asyncio.to_thread(self.store.get_job, poller.job_id)
        return job, await asyncio.to_thread(self.store.history, poller.job_id, poller.last_generation)

    def _poll_once(self, poller: _Poller, read: tuple[dict | None, list[dict]]) -> bool:
        """Fan one poll's updates out (each rendered once); True when the job is finished."""
        job, entries = read
        finished = job is None or job["status"] in TERMINAL
        changed = job is not None and job["updated_at"] != poller.last_update
        if not entries and not changed and not finished:
            return False
        if entries:
            poller.last_generation = entries[-1]["generation"]
        if changed:
            poller.last_update = job["updated_at"]
        update = _Update(
            [(entry["generation"], _generation(entry)) for entry in entries],
            (job["updated_at"], _job(job)) if changed else None,
            _end("unknown" if job is None else job["status"]) if finished else None,
        )
        for queue in list(poller.subscribers):
            self._offer(poller, queue, update)
        return finished

    def _offer(self, poller: _Poller, queue: asyncio.Queue, item) -> None:
        """Queue `item` for one stream; a full queue (a stream that fell behind) is emptied and told to reconnect,
        and gets nothing more."""
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            poller.subscribers.discard(queue)
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(_STOP if item is _STOP else _BEHIND)

    async def _sleep(self) -> bool:
        """Wait one poll interval; True when the app is stopping."""
        if self.stopping is None:
            await asyncio.sleep(self.poll)
            return False
        try:
            async with asyncio.timeout(self.poll):
                await self.stopping.wait()
        except TimeoutError:
            pass
        return self.stopping.is_set()


def _generation(entry: dict) -> str:
    return f"id: {entry['generation']}\nevent: generation\ndata: {json.dumps(entry)}\n\n"


def _job(job: dict) -> str:
    return f"event: job\ndata: {JobPublic.model_validate(job).model_dump_json()}\n\n"


def _end(status: str) -> str:
    return f"event: end\ndata: {json.dumps({'status': status})}\n\n"


def job_streams(request: Request) -> JobStreams:
    """The app's registry, made on first use (it reads the app's store, `events_poll`, the stream quota and the
    shutdown event `stopping`)."""
    state = request.app.state
    streams = getattr(state, "job_streams", None)
    if streams is None or streams.store is not state.store:  # a new lifespan (tests reuse an app)
        streams = state.job_streams = JobStreams(
            state.store,
            poll=getattr(state, "events_poll", 0.5),
            per_tenant=state.settings.tenant_streams,
            stopping=getattr(state, "stopping", None),
        )
    return streams


StreamsDep = Annotated[JobStreams, Depends(job_streams)]
