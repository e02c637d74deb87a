"""`Client`: the synchronous client of the nograd REST API (one `httpx.Client`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import httpx

from . import _requests as calls
from ._streams import Deadline, EventFollower, SSEDecoder, ended_early, stream_timeout
from .archive import extract
from .errors import ApiConnectionError, ApiError, StreamLost, reason_of
from .models import Event, Job, JobList, Study, StudyList


class Client:
    """A synchronous client of the nograd REST API; a context manager (closing it closes its connections).

    Errors: every refusal raises `ApiError` (`status`, the server's `detail`); no answer at all raises
    `ApiConnectionError` (a `ConnectionError`) naming the URL.

    Args:
        url: the service's base URL (default $NOGRAD_URL or http://127.0.0.1:8000); ValueError if not http(s).
        api_key: bearer key (default $NOGRAD_API_KEY; "" sends none); never printed.
        timeout: seconds per request. Event streams read without a deadline of their own; one silent for 45 s
            (three of the service's pings) counts as dropped and is reopened.
        transport: an httpx transport (tests: `httpx.MockTransport`, or a FastAPI `TestClient`'s).
        stream_retries: event-stream connections in a row that may fail before `events()` gives up.
        retry_delay: seconds before the first reconnection (doubled after each failure in a row, up to 8 s).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        *,
        stream_retries: int = 5,
        retry_delay: float = 0.5,
    ):
        self.url = calls.base_url(url)
        self.stream_retries, self.retry_delay = stream_retries, retry_delay
        self._http = httpx.Client(
            base_url=self.url, headers=calls.auth_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: calls.Call) -> Any:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.json, data=call.data, files=call.files
            )
        except httpx.TransportError as exc:
            raise ApiConnectionError.from_transport(exc, self.url) from exc
        return call.parse(response)

    # ---------------------------------------------------------------- jobs
    def submit(self, **job: Any) -> Job:
        """POST /v1/jobs; keyword arguments are JobCreate's fields (`options` and `endpoint` as dicts), e.g.
        `submit(method="bbt", task="mr", budget=200)`. Unset fields take the service's defaults."""
        return self._send(calls.submit(job))

    def job(self, job_id: str) -> Job:
        """GET /v1/jobs/{id}: its status, calls used of its budget, best metrics, timings."""
        return self._send(calls.job(job_id))

    def jobs(self, **filters: Any) -> JobList:
        """GET /v1/jobs, newest first; filters (None: unset): status, task, method, name, tag, study_id, limit
        (at most 500), offset."""
        return self._send(calls.jobs(filters))

    def history(self, job_id: str, after: int = -1) -> list[dict[str, Any]]:
        """GET /v1/jobs/{id}/history: the per-generation records after generation `after`."""
        return self._send(calls.history(job_id, after))

    def cancel(self, job_id: str) -> Job:
        """POST /v1/jobs/{id}/cancel: a queued job is cancelled at once, a running one stops at its next generation
        (409 once it has ended)."""
        return self._send(calls.cancel(job_id))

    def prompt(self, job_id: str, path: str | Path | None = None) -> bytes:
        """GET /v1/jobs/{id}/prompt: the tuned prompt (safetensors bytes), also written to `path` if given (409
        before the job succeeded)."""
        data = self._send(calls.prompt(job_id))
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def analysis(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}/analysis: what a succeeded job learned (its prompt, confusion matrices, changed
        examples)."""
        return self._send(calls.analysis(job_id))

    def export(self, job_id: str, format: str, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
        """GET /v1/jobs/{id}/export?format=...: the job's prompt as `native`, `peft`, `text` or `chat` files,
        unpacked under `out_dir` (made if missing); returns the files' paths.

        The archive is checked before anything is written: ValueError for an unsafe entry (absolute, `..`, a
        link), FileExistsError for a file already there unless `overwrite`. The service answers 409 before the
        job succeeded, 422 (naming `format`) for a format its method has no export for."""
        with tempfile.TemporaryFile() as spool:
            try:
                with self._http.stream("GET", calls.export_path(job_id), params={"format": format}) as response:
                    if response.status_code >= 400:
                        response.read()
                        calls.checked(response)
                    for chunk in response.iter_bytes():
                        spool.write(chunk)
            except httpx.TransportError as exc:
                raise ApiConnectionError.from_transport(exc, self.url) from exc
            spool.seek(0)
            return extract(spool, out_dir, overwrite=overwrite, what=f"the {format} export of job {job_id}")

    def events(self, job_id: str, last_event_id: int | str | None = None) -> Iterator[Event]:
        """The job's server-sent events, `(event, data)` pairs (`Event`), until its `end` event.

        A stream that drops (the connection breaks, or the service closes it early: restarting, or this client
        read too slowly) is reopened with the `Last-Event-ID` of the last event seen, so no `generation` is lost
        or repeated; the `job` snapshot that opens every connection may repeat. Raises `StreamLost` after
        `stream_retries` failed reconnections in a row, `ApiConnectionError` if the first connection fails,
        `ApiError` for a refusal (404: unknown job; 429: too many open streams).

        Args:
            last_event_id: resume after this generation (None: replay the job's whole history first).
        """
        return self._follow(job_id, last_event_id, None)

    def _follow(self, job_id: str, last_event_id: int | str | None, deadline: Deadline | None) -> Iterator[Event]:
        follower = EventFollower(self.url, job_id, last_event_id, retries=self.stream_retries, delay=self.retry_delay)
        path, opened = calls.events_path(job_id), False
        while True:
            if deadline is not None:
                deadline.check()
            timeout = stream_timeout(self._http.timeout, deadline)
            try:
                with self._http.stream("GET", path, headers=follower.headers(), timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                    delay = follower.accept(response)
                    if delay is None:
                        opened = True
                        follower.connected()
                        decoder = SSEDecoder()
                        for line in response.iter_lines():
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
            time.sleep(delay if deadline is None else deadline.pause(delay))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Job], Any] | None = None,
        *,
        poll: float = 1.0,
    ) -> Job:
        """The job once it has ended (succeeded, failed or cancelled: check `job.status`; a failed job does not
        raise).

        Follows its event stream; if the stream keeps failing (`StreamLost`) or is refused for the tenant's
        stream quota (429), polls GET /v1/jobs/{id} every `poll` seconds instead.

        Args:
            timeout: seconds to wait (None: no limit); past it, raises `WaitTimeout` (a `TimeoutError`; its `last`
                is the job's last state seen). The job goes on running.
            on_progress: called with the `Job` first as it is, then each time it changes (its status, calls or
                generation), and last as it ended.
        """
        deadline = Deadline(timeout, f"job {job_id}")

        def seen(job: Job) -> Job:
            if deadline.saw(job) and on_progress is not None:
                on_progress(job)
            return job

        job = seen(self.job(job_id))
        if job.done:
            return job
        try:
            with closing(self._follow(job_id, job.generation if job.generation >= 0 else None, deadline)) as events:
                for event in events:
                    if event.event == "job":
                        seen(event.job)
            return seen(self.job(job_id))
        except ApiError as exc:  # the stream kept failing, or the tenant's stream quota is used up: poll
            if not isinstance(exc, StreamLost) and exc.status != 429:
                raise
        while not (job := seen(self.job(job_id))).done:
            deadline.check()
            time.sleep(deadline.pause(poll))
        return job

    # ---------------------------------------------------------------- studies
    def submit_study(self, base: dict[str, Any], sweep: dict[str, list[Any]], name: str | None = None) -> Study:
        """POST /v1/studies: one job per combination of the `sweep` values (keys: JobCreate fields or
        `options.<name>`) and seed, each `base` with those values; all are created, or none (422 naming
        `sweep.<key>[i]` or `base.<field>`)."""
        return self._send(calls.submit_study(base, sweep, name))

    def study(self, study_id: str) -> Study:
        """GET /v1/studies/{id}: its jobs' counts, and per cell its jobs and metrics (mean, std, n)."""
        return self._send(calls.study(study_id))

    def studies(self) -> StudyList:
        """GET /v1/studies."""
        return self._send(calls.studies())

    def cancel_study(self, study_id: str) -> Study:
        """POST /v1/studies/{id}/cancel: cancels its jobs that have not ended."""
        return self._send(calls.cancel_study(study_id))

    def wait_study(
        self,
        study_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Study], Any] | None = None,
        *,
        poll: float = 2.0,
    ) -> Study:
        """The study once every job of it has ended, polled every `poll` seconds. `timeout` and `on_progress` (with
        each new `Study`) as in `wait`."""
        deadline = Deadline(timeout, f"study {study_id}")
        while True:
            study = self.study(study_id)
            if deadline.saw(study) and on_progress is not None:
                on_progress(study)
            if study.done:
                return study
            deadline.check()
            time.sleep(deadline.pause(poll))

    # ---------------------------------------------------------------- datasets, secrets and the catalog
    def upload(
        self,
        path: str | Path,
        *,
        template: str,
        verbalizer: str,
        test_file: str | Path | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/datasets: a JSONL or CSV file of labelled rows (and optionally its held-out `test_file`).
        `options`: name, text_field, text2_field, label_field, metric, test_fraction."""
        path, form = Path(path), {"template": template, "verbalizer": verbalizer, **options}
        with ExitStack() as opened:
            files: dict[str, Any] = {"file": (path.name, opened.enter_context(open(path, "rb")))}
            if test_file is not None:
                files["test_file"] = (Path(test_file).name, opened.enter_context(open(test_file, "rb")))
            return self._send(calls.upload(form, files))

    def datasets(self) -> dict[str, Any]:
        """GET /v1/datasets: {"data": [...], "count": n}."""
        return self._send(calls.datasets())

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """GET /v1/datasets/{id}."""
        return self._send(calls.dataset(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        """DELETE /v1/datasets/{id} (refused with 409 while a queued or running job uses it)."""
        self._send(calls.delete_dataset(dataset_id))

    def put_secret(self, name: str, value: str) -> dict[str, Any]:
        """POST /v1/secrets: store a remote API key under `name` (write-only)."""
        return self._send(calls.put_secret(name, value))

    def tasks(self) -> list[dict[str, Any]]:
        """GET /v1/tasks: the built-in tasks."""
        return self._send(calls.catalog("/v1/tasks"))

    def methods(self) -> list[dict[str, Any]]:
        """GET /v1/methods: the methods and their options."""
        return self._send(calls.catalog("/v1/methods"))

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models: the models served, with their live workers."""
        return self._send(calls.catalog("/v1/models"))

    def workers(self) -> list[dict[str, Any]]:
        """GET /v1/workers: the live workers."""
        return self._send(calls.catalog("/v1/workers"))

    def health(self) -> dict[str, Any]:
        """GET /healthz: the service's readiness (ApiError 503 while it is not ready)."""
        return self._send(calls.catalog("/healthz"))
