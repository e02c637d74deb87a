"""`AsyncClient`: the asyncio client of the nograd REST API (one `httpx.AsyncClient`), method for method the
synchronous `Client` (see its docstrings); calls are coroutines, `events` an async iterator."""

from __future__ import annotations

import asyncio
import inspect
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from . import _requests as calls
from ._streams import Deadline, EventFollower, SSEDecoder, ended_early, stream_timeout
from .archive import extract
from .errors import ApiConnectionError, ApiError, StreamLost, reason_of
from .models import Event, Job, JobList, Study, StudyList


class AsyncClient:
    """An asyncio client of the nograd REST API; an async context manager. Arguments as `Client`'s (`transport`
    an `httpx.AsyncBaseTransport`). `on_progress` callbacks may be plain functions or coroutine functions.

    Example:
        >>> async with AsyncClient("http://127.0.0.1:8000", api_key="ng_...") as api:
        ...     job = await api.submit(method="bbt", task="mr", budget=200)
        ...     done = await api.wait(job.id, on_progress=lambda j: print(j.calls, j.best_dev_metric))
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        stream_retries: int = 5,
        retry_delay: float = 0.5,
    ):
        self.url = calls.base_url(url)
        self.stream_retries, self.retry_delay = stream_retries, retry_delay
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=calls.auth_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: calls.Call) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json, data=call.data, files=call.files
            )
        except httpx.TransportError as exc:
            raise ApiConnectionError.from_transport(exc, self.url) from exc
        return call.parse(response)

    # ---------------------------------------------------------------- jobs
    async def submit(self, **job: Any) -> Job:
        """POST /v1/jobs (`Client.submit`)."""
        return await self._send(calls.submit(job))

    async def job(self, job_id: str) -> Job:
        """GET /v1/jobs/{id}."""
        return await self._send(calls.job(job_id))

    async def jobs(self, **filters: Any) -> JobList:
        """GET /v1/jobs (`Client.jobs`)."""
        return await self._send(calls.jobs(filters))

    async def history(self, job_id: str, after: int = -1) -> list[dict[str, Any]]:
        """GET /v1/jobs/{id}/history."""
        return await self._send(calls.history(job_id, after))

    async def cancel(self, job_id: str) -> Job:
        """POST /v1/jobs/{id}/cancel."""
        return await self._send(calls.cancel(job_id))

    async def prompt(self, job_id: str, path: str | Path | None = None) -> bytes:
        """GET /v1/jobs/{id}/prompt (`Client.prompt`)."""
        data = await self._send(calls.prompt(job_id))
        if path is not None:
            await asyncio.to_thread(Path(path).write_bytes, data)
        return data

    async def analysis(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}/analysis."""
        return await self._send(calls.analysis(job_id))

    async def export(self, job_id: str, format: str, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
        """GET /v1/jobs/{id}/export, unpacked safely under `out_dir` (`Client.export`)."""
        with tempfile.TemporaryFile() as spool:
            try:
                async with self._http.stream("GET", calls.export_path(job_id), params={"format": format}) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        calls.checked(response)
                    async for chunk in response.aiter_bytes():
                        spool.write(chunk)
            except httpx.TransportError as exc:
                raise ApiConnectionError.from_transport(exc, self.url) from exc
            spool.seek(0)
            what = f"the {format} export of job {job_id}"
            return await asyncio.to_thread(extract, spool, out_dir, overwrite=overwrite, what=what)

    def events(self, job_id: str, last_event_id: int | str | None = None) -> AsyncIterator[Event]:
        """The job's server-sent events until its `end`, reconnecting with `Last-Event-ID` (`Client.events`).
        Leaving the loop early: wrap it in `contextlib.aclosing` to close the stream at once."""
        return self._follow(job_id, last_event_id, None)

    async def _follow(
        self, job_id: str, last_event_id: int | str | None, deadline: Deadline | None
    ) -> AsyncIterator[Event]:
        follower = EventFollower(self.url, job_id, last_event_id, retries=self.stream_retries, delay=self.retry_delay)
        path, opened = calls.events_path(job_id), False
        while True:
            if deadline is not None:
                deadline.check()
            timeout = stream_timeout(self._http.timeout, deadline)
            try:
                async with self._http.stream("GET", path, headers=follower.headers(), timeout=timeout) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    delay = follower.accept(response)
                    if delay is None:
                        opened = True
                        follower.connected()
                        decoder = SSEDecoder()
                        async for line in response.aiter_lines():
                            if deadline is not None:
                                deadline.check()
                            event = decoder.feed(line)
                            if event is not None:
                                follower.seen(event, decoder.last_id)
                                yield event
                                if follower.ended:
                                    return
                        delay = follower.dropped(ended_early(decoder))
            except httpx.TransportError as exc:
                if deadline is not None:
                    deadline.check()
                if not opened:
                    raise ApiConnectionError.from_transport(exc, self.url) from exc
                delay = follower.dropped(reason_of(exc))
            await asyncio.sleep(delay if deadline is None else deadline.pause(delay))

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Job], Any] | None = None,
        *,
        poll: float = 1.0,
    ) -> Job:
        """The job once it has ended, following its events, polling if they fail (`Client.wait`). The timeout is
        kept to the moment (`asyncio.timeout`): `WaitTimeout` then, whatever the stream is doing."""
        deadline = Deadline(timeout, f"job {job_id}")
        scope = asyncio.timeout(deadline.remaining())
        try:
            async with scope:
                return await self._wait(job_id, deadline, on_progress, poll)
        except TimeoutError:
            if scope.expired():
                raise deadline.error() from None
            raise

    async def _wait(
        self, job_id: str, deadline: Deadline, on_progress: Callable[[Job], Any] | None, poll: float
    ) -> Job:
        async def seen(job: Job) -> Job:
            if deadline.saw(job) and on_progress is not None:
                await _called(on_progress, job)
            return job

        job = await seen(await self.job(job_id))
        if job.done:
            return job
        events = self._follow(job_id, job.generation if job.generation >= 0 else None, deadline)
        try:
            async for event in events:
                if event.event == "job":
                    await seen(event.job)
            return await seen(await self.job(job_id))
        except ApiError as exc:  # the stream kept failing, or the tenant's stream quota is used up: poll
            if not isinstance(exc, StreamLost) and exc.status != 429:
                raise
        finally:
            await events.aclose()
        while not (job := await seen(await self.job(job_id))).done:
            deadline.check()
            await asyncio.sleep(deadline.pause(poll))
        return job

    # ---------------------------------------------------------------- studies
    async def submit_study(self, base: dict[str, Any], sweep: dict[str, list[Any]], name: str | None = None) -> Study:
        """POST /v1/studies (`Client.submit_study`)."""
        return await self._send(calls.submit_study(base, sweep, name))

    async def study(self, study_id: str) -> Study:
        """GET /v1/studies/{id}."""
        return await self._send(calls.study(study_id))

    async def studies(self) -> StudyList:
        """GET /v1/studies."""
        return await self._send(calls.studies())

    async def cancel_study(self, study_id: str) -> Study:
        """POST /v1/studies/{id}/cancel."""
        return await self._send(calls.cancel_study(study_id))

    async def wait_study(
        self,
        study_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Study], Any] | None = None,
        *,
        poll: float = 2.0,
    ) -> Study:
        """The study once every job of it has ended, polled every `poll` seconds (`Client.wait_study`)."""
        deadline = Deadline(timeout, f"study {study_id}")
        while True:
            study = await self.study(study_id)
            if deadline.saw(study) and on_progress is not None:
                await _called(on_progress, study)
            if study.done:
                return study
            deadline.check()
            await asyncio.sleep(deadline.pause(poll))

    # ---------------------------------------------------------------- datasets, secrets and the catalog
    async def upload(
        self,
        path: str | Path,
        *,
        template: str,
        verbalizer: str,
        test_file: str | Path | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/datasets (`Client.upload`)."""
        path, form = Path(path), {"template": template, "verbalizer": verbalizer, **options}
        with ExitStack() as opened:
            files: dict[str, Any] = {"file": (path.name, opened.enter_context(open(path, "rb")))}
            if test_file is not None:
                files["test_file"] = (Path(test_file).name, opened.enter_context(open(test_file, "rb")))
            return await self._send(calls.upload(form, files))

    async def datasets(self) -> dict[str, Any]:
        """GET /v1/datasets."""
        return await self._send(calls.datasets())

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        """GET /v1/datasets/{id}."""
        return await self._send(calls.dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        """DELETE /v1/datasets/{id}."""
        await self._send(calls.delete_dataset(dataset_id))

    async def put_secret(self, name: str, value: str) -> dict[str, Any]:
        """POST /v1/secrets."""
        return await self._send(calls.put_secret(name, value))

    async def tasks(self) -> list[dict[str, Any]]:
        """GET /v1/tasks."""
        return await self._send(calls.catalog("/v1/tasks"))

    async def methods(self) -> list[dict[str, Any]]:
        """GET /v1/methods."""
        return await self._send(calls.catalog("/v1/methods"))

    async def models(self) -> list[dict[str, Any]]:
        """GET /v1/models."""
        return await self._send(calls.catalog("/v1/models"))

    async def workers(self) -> list[dict[str, Any]]:
        """GET /v1/workers."""
        return await self._send(calls.catalog("/v1/workers"))

    async def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return await self._send(calls.catalog("/healthz"))


async def _called(callback: Callable[[Any], Any], value: Any) -> None:
    """Calls `callback(value)`, awaiting what it returns if it is awaitable (a coroutine function's)."""
    result = callback(value)
    if inspect.isawaitable(result):
        await result
