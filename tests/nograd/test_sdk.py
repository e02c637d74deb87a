"""The SDK (`nograd.Client`, `nograd.AsyncClient`) against a real app served by uvicorn in a thread (embedded
worker, fake models, auth on): submit, wait with progress, history, studies, errors; event streams cut by a
transport wrapper after a few events, resumed with Last-Event-ID; the polling fallback; and, on an
`httpx.MockTransport`, exports (zips built here), failed jobs and what a newer service may add."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import threading
import time
import zipfile

import httpx
import pytest
from procs import free_port, wait_until

import nograd
from nograd.sdk import (
    ApiConnectionError,
    ApiError,
    ApiTimeoutError,
    AsyncClient,
    Client,
    Job,
    JobList,
    MetricSummary,
    Study,
    WaitTimeout,
)
from nograd.sdk._streams import SSEDecoder
from nograd.service.api import create_app
from nograd.service.settings import Settings

JOB = {
    "method": "bbt",
    "task": "trec",
    "model": "fake",
    "budget": 80,
    "dev_every": 40,
    "options": {"dim": 8, "popsize": 10},
}
SLOW = {**JOB, "model": "fake:0.02", "budget": 20_000}  # about 0.2 s a generation: runs for minutes


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(url, keys): the app served on a free port; alice's and bob's keys."""
    import uvicorn

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("sdk") / "data", models=["fake", "fake:0.02"], auth=True, lease_seconds=2.0
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn")
        app.state.events_poll = 0.05
        keys = {name: app.state.store.create_key(name) for name in ("alice", "bob")}
        yield f"http://127.0.0.1:{server.config.port}", keys
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def api(service):
    url, keys = service
    with Client(url, keys["alice"]) as client:
        yield client


# ---------------------------------------------------------------- transports that break streams
class _Cut(httpx.SyncByteStream):
    """A response stream that breaks (httpx.ReadError) right after its `after`-th event."""

    def __init__(self, inner: httpx.SyncByteStream, after: int):
        self.inner, self.after = inner, after

    def __iter__(self):
        buffer, sent = b"", 0
        for chunk in self.inner:
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                yield block + b"\n\n"
                if not block.startswith(b":"):
                    sent += 1
                    if sent == self.after:
                        raise httpx.ReadError("the test cut the connection")

    def close(self) -> None:
        self.inner.close()


class _AsyncCut(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, after: int):
        self.inner, self.after = inner, after

    async def __aiter__(self):
        buffer, sent = b"", 0
        async for chunk in self.inner:
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                yield block + b"\n\n"
                if not block.startswith(b":"):
                    sent += 1
                    if sent == self.after:
                        raise httpx.ReadError("the test cut the connection")

    async def aclose(self) -> None:
        await self.inner.aclose()


class Cutting(httpx.BaseTransport):
    """The real transport, but the first `cuts` event streams break after `after` events; `last_event_ids` holds
    the Last-Event-ID header of every stream opened (None: none sent)."""

    def __init__(self, after: int, cuts: int):
        self.inner, self.after, self.cuts = httpx.HTTPTransport(), after, cuts
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/events"):
            self.last_event_ids.append(request.headers.get("Last-Event-ID"))
            if self.cuts > 0:
                self.cuts -= 1
                response.stream = _Cut(response.stream, self.after)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncCutting(httpx.AsyncBaseTransport):
    def __init__(self, after: int, cuts: int):
        self.inner, self.after, self.cuts = httpx.AsyncHTTPTransport(), after, cuts
        self.last_event_ids: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/events"):
            self.last_event_ids.append(request.headers.get("Last-Event-ID"))
            if self.cuts > 0:
                self.cuts -= 1
                response.stream = _AsyncCut(response.stream, self.after)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class RefusingStreams(httpx.BaseTransport):
    """The real transport, but every event stream is answered `status` (503: down; 429: over the quota)."""

    def __init__(self, status: int):
        self.inner, self.status, self.paths = httpx.HTTPTransport(), status, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path.endswith("/events"):
            return httpx.Response(self.status, json={"detail": f"streams refused by the test ({self.status})"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------- the real app, sync
def test_the_top_level_names_are_the_sdks():
    assert nograd.Client is Client and nograd.AsyncClient is AsyncClient and nograd.ApiError is ApiError
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        nograd.Nope  # noqa: B018


def test_submit_wait_with_progress_history_and_listing(api):
    job = api.submit(**JOB, name="sdk run", tags=["sdk"])
    assert isinstance(job, Job) and job.status == "queued" and job.budget == 80 and job.tags == ["sdk"]
    seen: list[Job] = []
    done = api.wait(job.id, timeout=120, on_progress=seen.append)
    assert done.status == "succeeded" and done.calls == 80 and done.done and done.best_dev_metric is not None
    assert seen[0].status in ("queued", "running")  # first as it was, last as it ended
    assert (seen[-1].status, seen[-1].calls, seen[-1].updated_at) == ("succeeded", 80, done.updated_at)
    assert [j.calls for j in seen] == sorted(j.calls for j in seen) and len(seen) >= 3
    assert len({(j.status, j.calls, j.updated_at) for j in seen}) == len(seen)  # each call a change
    history = api.history(job.id)
    assert [h["generation"] for h in history] == list(range(len(history))) and len(history) >= 8
    assert api.history(job.id, after=len(history) - 2) == history[-1:]
    page = api.jobs(tag="sdk")
    assert isinstance(page, JobList) and [j.id for j in page.data] == [job.id] and page.count == 1
    assert api.jobs(name="sdk run").data[0].name == "sdk run"
    assert api.job(job.id).test_metric == done.test_metric
    assert api.prompt(job.id)[:8]  # safetensors bytes
    with pytest.raises(ApiError) as refused:
        api.cancel(job.id)
    assert refused.value.status == 409


def test_events_resume_with_last_event_id_after_dropped_streams(service, api):
    job = api.wait(api.submit(**JOB).id, timeout=120)
    n = len(api.history(job.id))
    url, keys = service
    transport = Cutting(after=3, cuts=2)
    with Client(url, keys["alice"], transport=transport, retry_delay=0.01) as cut:
        events = list(cut.events(job.id))
    generations = [e.generation for e in events if e.event == "generation"]
    assert generations == list(range(n))  # none lost, none twice, over three connections
    assert transport.last_event_ids == [None, "2", "5"]  # each reconnection resumes after the last id seen
    assert events[-1] == ("end", {"status": "succeeded"}) and events[-2].job.status == "succeeded"
    with Client(url, keys["alice"]) as plain:  # resuming from a given id replays only what follows
        resumed = [e.generation for e in plain.events(job.id, last_event_id=n - 3) if e.event == "generation"]
    assert resumed == [n - 2, n - 1]


def test_a_running_jobs_stream_resumes_without_duplicates(service, api):
    job = api.submit(**{**JOB, "model": "fake:0.02", "budget": 100})
    url, keys = service
    transport = Cutting(after=2, cuts=3)
    with Client(url, keys["alice"], transport=transport, retry_delay=0.01) as cut:
        generations = [e.generation for e in cut.events(job.id) if e.event == "generation"]
    assert generations == list(range(len(api.history(job.id)))), generations
    assert len(transport.last_event_ids) == 4


@pytest.mark.parametrize("status, streams, error", [(503, 3, None), (429, 1, 429)])
def test_wait_falls_back_to_polling_when_streams_fail(service, api, status, streams, error):
    """503s are retried (1 + stream_retries connections), then wait polls; a 429 (the tenant's stream quota) sends
    it to polling at once. `events()` itself raises: StreamLost (status None) after the retries, or the 429."""
    job = api.submit(**{**JOB, "model": "fake:0.02", "budget": 60})
    url, keys = service
    transport = RefusingStreams(status)
    with Client(url, keys["alice"], transport=transport, stream_retries=2, retry_delay=0.01) as refused:
        done = refused.wait(job.id, timeout=120, poll=0.05)
        assert done.status == "succeeded"
        assert sum(p.endswith("/events") for p in transport.paths) == streams
        assert sum(p == f"/v1/jobs/{job.id}" for p in transport.paths) >= 3  # the first GET, then polls
        with pytest.raises(ApiError) as failed:
            next(refused.events(job.id))
    assert failed.value.status == error and sum(p.endswith("/events") for p in transport.paths) == 2 * streams


def test_wait_times_out_naming_the_job_and_leaves_it_running(api):
    job = api.submit(**SLOW)
    seen: list[Job] = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timed_out:
        api.wait(job.id, timeout=1.0, on_progress=seen.append)
    assert 1.0 <= time.monotonic() - started < 5
    assert isinstance(timed_out.value, TimeoutError) and f"job {job.id} did not finish within 1 s" in str(
        timed_out.value
    )
    assert timed_out.value.last.id == job.id and seen and seen[-1] is timed_out.value.last
    assert api.job(job.id).status in ("queued", "running")
    assert api.cancel(job.id).id == job.id
    assert api.wait(job.id, timeout=60).status == "cancelled"


def test_errors_carry_the_status_and_the_servers_detail(service, api):
    with pytest.raises(ApiError) as missing:
        api.job("job_nope")
    assert missing.value.status == 404 and str(missing.value) == "HTTP 404: job job_nope not found"
    with pytest.raises(ApiError) as invalid:
        api.submit(**{**JOB, "task": "nope", "budget": -1})
    assert invalid.value.status == 422 and "budget:" in str(invalid.value) and isinstance(invalid.value.detail, list)
    url, keys = service
    with Client(url, "ng_wrong") as wrong, pytest.raises(ApiError) as unauthorized:
        wrong.jobs()
    assert unauthorized.value.status == 401
    with Client(url, keys["bob"]) as bob, pytest.raises(ApiError) as foreign:  # another tenant's job: 404
        bob.job(api.submit(**JOB).id)
    assert foreign.value.status == 404
    with pytest.raises(ApiError) as no_stream:
        next(api.events("job_nope"))
    assert no_stream.value.status == 404


def test_no_answer_is_a_connection_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "ng_x") as down:
        for call in (lambda: down.job("job_x"), lambda: next(down.events("job_x")), lambda: down.wait("job_x")):
            with pytest.raises(ApiConnectionError) as refused:
                call()
            assert isinstance(refused.value, ConnectionError) and not refused.value.connected
            assert str(refused.value) == f"cannot reach the nograd service at {url} (Connection refused)"
    with pytest.raises(ValueError, match="http:// or https://"):
        Client("localhost:8000")


def test_a_study_is_submitted_waited_for_and_summarised(api):
    base = {k: v for k, v in JOB.items() if k != "method"}
    study = api.submit_study(base, {"method": ["bbt"], "seed": [0, 1]}, name="sdk study")
    assert isinstance(study, Study) and study.n_jobs == 2 and study.name == "sdk study" and not study.done
    seen: list[Study] = []
    done = api.wait_study(study.id, timeout=180, on_progress=seen.append, poll=0.2)
    assert done.done and done.counts["succeeded"] == 2 and done.n_done == 2 and seen[-1] == done
    (cell,) = done.cells
    assert cell.params == {"method": "bbt"} and cell.seeds == [0, 1] and cell.n_done == 2
    assert isinstance(cell.dev_metric, MetricSummary) and cell.dev_metric.n == 2 and cell.dev_metric.std is not None
    assert study.id in [s.id for s in api.studies().data]
    assert {j.id for j in api.jobs(study_id=study.id).data} == set(cell.job_ids)
    with pytest.raises(ApiError) as missing:
        api.study("study_nope")
    assert missing.value.status == 404


def test_datasets_and_the_catalog(tmp_path, api):
    rows = "".join(f"great movie number {i},pos\nawful film number {i},neg\n" for i in range(40))
    (tmp_path / "reviews.csv").write_text("text,label\n" + rows)
    (tmp_path / "test.csv").write_text(
        "text,label\n" + "".join(f"a fine film {i},pos\na dull one {i},neg\n" for i in range(5))
    )
    form = {"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great"}
    held_out = api.upload(tmp_path / "reviews.csv", **form, name="reviews", test_fraction=0.25)
    assert held_out["name"] == "reviews" and held_out["summary"]["test_fraction"] == 0.25
    with_test = api.upload(tmp_path / "reviews.csv", **form, test_file=tmp_path / "test.csv")
    assert with_test["test_filename"] == "test.csv" and with_test["summary"]["test"] == 10
    assert {held_out["id"], with_test["id"]} <= {d["id"] for d in api.datasets()["data"]}
    assert api.dataset(held_out["id"])["filename"] == "reviews.csv"
    assert api.delete_dataset(held_out["id"]) is None
    with pytest.raises(ApiError) as gone:
        api.dataset(held_out["id"])
    assert gone.value.status == 404
    assert "trec" in {t["name"] for t in api.tasks()} and "bbt" in {m["name"] for m in api.methods()}
    assert {m["name"] for m in api.models()} == {"fake", "fake:0.02"} and api.workers()
    assert api.health()["status"] == "ok"


# ---------------------------------------------------------------- the real app, async
def test_the_async_client_submits_waits_resumes_and_times_out(service):
    url, keys = service

    async def main():
        async with AsyncClient(url, keys["alice"]) as api:
            job = await api.submit(**JOB)
            seen = []

            async def progress(j: Job) -> None:  # a coroutine callback is awaited
                seen.append(j)

            done = await api.wait(job.id, timeout=120, on_progress=progress)
            assert done.status == "succeeded" and seen[-1] == done and len(seen) >= 3
            history = await api.history(job.id)
            assert (await api.jobs(method="bbt")).count >= 1

            slow = await api.submit(**SLOW)
            started = time.monotonic()
            with pytest.raises(WaitTimeout):
                await api.wait(slow.id, timeout=0.5)
            assert time.monotonic() - started < 1.5  # kept to the moment by asyncio.timeout
            assert (await api.cancel(slow.id)).id == slow.id
            with pytest.raises(ApiError) as missing:
                await api.job("job_nope")
            assert missing.value.status == 404

        transport = AsyncCutting(after=3, cuts=2)
        async with AsyncClient(url, keys["alice"], transport=transport, retry_delay=0.01) as cut:
            events = [e async for e in cut.events(job.id)]
        assert [e.generation for e in events if e.event == "generation"] == list(range(len(history)))
        assert transport.last_event_ids == [None, "2", "5"] and events[-1].event == "end"

    asyncio.run(main())


# ---------------------------------------------------------------- on a mock transport
def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


PEFT = {
    "adapter_config.json": b'{"peft_type": "PROMPT_TUNING"}',
    "adapter_model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "nograd_template.json": b"{}",
}


def _exporting(archive: bytes, requests: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if requests is not None:
            requests.append(request)
        if request.url.path == "/v1/jobs/job_1/export":
            return httpx.Response(200, content=archive, headers={"content-type": "application/zip"})
        if request.url.path == "/v1/jobs/job_running/export":
            return httpx.Response(
                409, json={"detail": "job job_running is running; its export exists once it succeeded"}
            )
        return httpx.Response(404, json={"detail": "not found"})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_export_unpacks_the_zip_and_never_clobbers(tmp_path, flavour):
    requests: list[httpx.Request] = []
    transport = _exporting(_zip({**PEFT, "docs/README.txt": b"hi"}), requests)

    def export(*args, **kw):
        if flavour == "sync":
            with Client("http://nograd.test", "ng_x", transport=transport) as api:
                return api.export(*args, **kw)

        async def run():
            async with AsyncClient("http://nograd.test", "ng_x", transport=transport) as api:
                return await api.export(*args, **kw)

        return asyncio.run(run())

    out = tmp_path / "adapter"
    paths = export("job_1", "peft", out)
    assert paths == [out / name for name in (*PEFT, "docs/README.txt")]
    assert {p.name: p.read_bytes() for p in paths} == {**PEFT, "README.txt": b"hi"}
    assert requests[0].url.params["format"] == "peft" and requests[0].headers["Authorization"] == "Bearer ng_x"
    (out / "adapter_config.json").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="adapter_config.json exists; pass overwrite=True"):
        export("job_1", "peft", out)
    assert (out / "adapter_config.json").read_bytes() == b"mine"
    export("job_1", "peft", out, overwrite=True)
    assert (out / "adapter_config.json").read_bytes() == PEFT["adapter_config.json"]
    with pytest.raises(ApiError) as conflict:
        export("job_running", "peft", tmp_path / "none")
    assert conflict.value.status == 409 and "exists once it succeeded" in str(conflict.value)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "entries, links, why",
    [
        ({"../evil.txt": b"x"}, (), "a '..' part"),
        ({"adapter/../../evil.txt": b"x"}, (), "a '..' part"),
        ({"/etc/evil": b"x"}, (), "an absolute path"),
        ({"C:/evil.txt": b"x"}, (), "a Windows path"),
        ({"..\\evil.txt": b"x"}, (), "a Windows path"),
        ({}, ("link",), "a symbolic link"),
    ],
)
def test_export_refuses_an_unsafe_archive_whole(tmp_path, entries, links, why):
    transport = _exporting(_zip({**PEFT, **entries}, links))
    with Client("http://nograd.test", transport=transport) as api, pytest.raises(ValueError) as refused:
        api.export("job_1", "peft", tmp_path / "out")
    assert why in str(refused.value) and "nothing was written" in str(refused.value)
    assert list(tmp_path.rglob("*")) == []  # not even the folder


def test_export_refuses_what_is_not_a_zip(tmp_path):
    not_zip = pytest.raises(ValueError, match="the peft export of job job_1 is not a zip archive")
    with Client("http://nograd.test", transport=_exporting(b"not a zip")) as api, not_zip:
        api.export("job_1", "peft", tmp_path)


def _job(status: str, calls: int, **extra) -> dict:
    return {
        "id": "job_1",
        "status": status,
        "method": "bbt",
        "budget": 10,
        "calls": calls,
        "updated_at": calls,
        **extra,
    }


def test_wait_returns_a_failed_job_without_raising():
    states = iter([_job("running", 5), _job("failed", 5, error="EngineError: boom", updated_at=6)])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs/job_1":
            return httpx.Response(200, json=next(states))
        body = "event: job\ndata: " + json.dumps(_job("failed", 5, error="EngineError: boom", updated_at=6))
        body += '\n\nevent: end\ndata: {"status": "failed"}\n\n'
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    seen = []
    with Client("http://nograd.test", transport=httpx.MockTransport(handle)) as api:
        done = api.wait("job_1", on_progress=seen.append)
    assert done.status == "failed" and done.error == "EngineError: boom" and not done.succeeded and done.done
    assert [j.status for j in seen] == ["running", "failed"]  # the last snapshot and the final GET are one state


def test_results_keep_what_a_newer_service_adds_and_read_like_the_old_dicts():
    job = Job.model_validate(_job("running", 3, priority=7, phase={"name": "search"}))
    assert job.priority == 7 and job.model_extra == {"priority": 7}
    assert job["id"] == "job_1" and job["priority"] == 7 and job.get("nope", "-") == "-"
    assert "priority" in job and "calls" in job and "task" not in job  # what the service sent
    assert job.to_dict() == _job("running", 3, priority=7, phase={"name": "search"})
    with pytest.raises(KeyError):
        job["nope"]  # noqa: B018
    study = Study.model_validate(
        {
            "id": "study_1",
            "n_jobs": 2,
            "counts": {"succeeded": 1, "running": 1},
            "cells": [{"key": "method=bbt", "dev_metric": {"mean": 0.5, "std": None, "n": 1, "median": 0.5}}],
            "owner": "alice",
        }
    )
    assert study.owner == "alice" and study.cells[0].dev_metric.median == 0.5 and study.n_done == 1


def test_study_calls_follow_the_contract_and_wait_study_polls():
    requests: list[httpx.Request] = []
    states = iter([{"succeeded": 0, "running": 2}, {"succeeded": 0, "running": 2}, {"succeeded": 2, "running": 0}])

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "POST" and request.url.path == "/v1/studies":
            return httpx.Response(201, json={"id": "study_1", "n_jobs": 2, **json.loads(request.content)})
        if request.url.path == "/v1/studies/study_1":
            counts = next(states)
            return httpx.Response(
                200, json={"id": "study_1", "n_jobs": 2, "counts": counts, "done": not counts["running"]}
            )
        if request.url.path == "/v1/studies/study_1/cancel":
            return httpx.Response(200, json={"id": "study_1", "counts": {"cancelled": 2}, "done": True})
        return httpx.Response(200, json={"data": [{"id": "study_1"}], "count": 1})

    seen = []
    with Client("http://nograd.test", transport=httpx.MockTransport(handle)) as api:
        study = api.submit_study({"task": "mr"}, {"method": ["bbt", "bbpl"]}, name="s")
        assert json.loads(requests[0].content) == {
            "name": "s",
            "base": {"task": "mr"},
            "sweep": {"method": ["bbt", "bbpl"]},
        }
        assert study.sweep == {"method": ["bbt", "bbpl"]} and study.base == {"task": "mr"}
        done = api.wait_study("study_1", on_progress=seen.append, poll=0.01)
        assert done.done and [s.counts["succeeded"] for s in seen] == [0, 2]  # called on change only
        assert api.cancel_study("study_1").counts == {"cancelled": 2}
        assert api.studies().count == 1
        with pytest.raises(WaitTimeout, match="study study_1 did not finish within 0 s"):
            states = iter([{"succeeded": 0, "running": 2}])
            api.wait_study("study_1", timeout=0)
    assert [r.url.path for r in requests[-2:]] == ["/v1/studies", "/v1/studies/study_1"]


def test_a_request_that_times_out_is_an_api_timeout_error():
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        Client("http://nograd.test", transport=httpx.MockTransport(handle)) as api,
        pytest.raises(ApiTimeoutError) as slow,
    ):
        api.jobs()
    assert isinstance(slow.value, TimeoutError) and isinstance(slow.value, ApiError) and slow.value.connected
    assert "the nograd service at http://nograd.test did not answer in time" in str(slow.value)


def test_the_decoder_reads_the_event_stream_format():
    decoder = SSEDecoder()
    lines = [": ping", "id: 3", "event: generation", 'data: {"generation":', "data: 3}", "", "retry: 10", ""]
    lines += ["event:job", 'data:{"id": "job_1"}', "", ": this stream fell behind; reconnect", ""]
    events = [e for e in map(decoder.feed, lines) if e is not None]
    assert events == [("generation", {"generation": 3}), ("job", {"id": "job_1"})]
    assert decoder.last_id == "3" and decoder.comment == "this stream fell behind; reconnect"
    with pytest.raises(ApiError, match="not JSON"):
        decoder.feed("data: {")
        decoder.feed("")


def test_export_unpacks_the_routes_zip(api, tmp_path):
    from nograd.export import export_files

    job = api.wait(api.submit(**JOB).id, timeout=60)
    assert job.status == "succeeded"
    paths = api.export(job.id, "peft", tmp_path / "peft")
    expected = export_files(api.prompt(job.id), "peft")
    assert sorted(p.name for p in paths) == sorted(expected)
    assert all(p.read_bytes() == expected[p.name] for p in paths)
