"""Operations that never hang and fast recovery (issue 12, items 5 and 6), with real processes where the finding is
about processes: /livez and /readyz; with Redis down the API answers at once, accepts jobs into the store and they
finish once Redis is back; `nograd worker` and `nograd runner` honour SIGTERM within seconds while Redis is away;
`nograd serve` with an open event stream shuts down within its grace and hands the running job back; a worker
killed mid-batch loses its batch to another worker as soon as its heartbeat expires, not after claim_idle."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from procs import Proc, RedisServer, answers, free_port, serve, wait_until, worker
from redis import Redis as SyncRedis

from nograd.service.api import create_app
from nograd.service.queue import Batch, QueueError, RedisQueue
from nograd.service.settings import Settings
from nograd.service.store import Store

JOB = {"method": "bbt", "task": "trec", "budget": 20, "seed": 1, "dev_every": 10, "options": {"dim": 8, "popsize": 10}}


@pytest.fixture
def redis(tmp_path):
    """A private, persistent (AOF) redis-server this test may stop and restart."""
    try:
        server = RedisServer(tmp_path / "redis").start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def procs():
    """Processes a test starts; all killed at the end, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


def _key(data_dir, tenant: str = "alice") -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{data_dir / 'nograd.db'}")
    try:
        return store.create_key(tenant)
    finally:
        store.close()


def _lease(data_dir, job_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(data_dir / "nograd.db") as conn:
        return conn.execute("SELECT status, lease_owner FROM jobs WHERE id = ?", (job_id,)).fetchone()


def _timed(call):
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def _stopped_within(proc: Proc, seconds: float) -> tuple[int | None, float]:
    """SIGTERM `proc`; (its exit status, seconds it took), or (None, seconds) when it outlived `seconds`."""
    started = time.monotonic()
    proc.proc.terminate()
    try:
        code = proc.proc.wait(seconds)
    except Exception:
        return None, time.monotonic() - started
    return code, time.monotonic() - started


def _stopped_within_all(procs: list[Proc], seconds: float) -> list[tuple[int | None, float]]:
    """SIGTERM all of `procs` at once; each one's (exit status or None, seconds it took)."""
    started = time.monotonic()
    for proc in procs:
        proc.proc.terminate()
    out = []
    for proc in procs:
        try:
            code = proc.proc.wait(max(0.1, seconds - (time.monotonic() - started)))
        except Exception:
            code = None
        out.append((code, time.monotonic() - started))
    return out


# ------------------------------------------------------------------ probes
class SlowStore(Store):
    """A store whose status count hangs, as a database that stopped answering does."""

    def count_by_status(self):
        time.sleep(2)
        return super().count_by_status()


def test_livez_and_readyz_need_no_key_and_readyz_names_what_failed(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=True, ready_timeout=0.5)
    with TestClient(create_app(settings)) as client:
        assert client.get("/livez").json() == {"status": "ok"}
        for path in ("/readyz", "/healthz"):
            ready = client.get(path)
            assert ready.status_code == 200, ready.text
            assert ready.json()["store"] == ready.json()["queue"] == "ok"
            assert ready.json()["queue_depth"] == 0
    slow = SlowStore(f"sqlite:///{tmp_path / 'slow.db'}")
    with TestClient(create_app(settings, store=slow)) as client:
        (ready, seconds) = _timed(lambda: client.get("/readyz"))
        assert ready.status_code == 503 and seconds < 2.5, (ready.text, seconds)
        body = ready.json()
        assert body["status"] == "unavailable" and "0.5 s" in body["store"] and body["queue"] == "ok"
        assert _timed(lambda: client.get("/livez"))[1] < 0.5  # liveness never waits on the store


# ------------------------------------------------------------------ the queue's handles
def test_bounded_handle_gives_up_fast_while_the_patient_one_rides_out_a_restart(redis):
    async def scenario():
        patient = RedisQueue(redis.url, namespace=f"t{uuid.uuid4().hex[:8]}")
        fast = patient.bounded(0.5)
        await patient.heartbeat({"id": "w1", "models": {}}, ttl=60)
        assert [w["id"] for w in await fast.workers()] == ["w1"]
        redis.stop()
        started = time.monotonic()
        with pytest.raises(QueueError, match="did not answer within 0.5 s"):
            await fast.workers()
        assert time.monotonic() - started < 1.5
        waiting = asyncio.ensure_future(patient.workers())
        await asyncio.sleep(1.0)
        assert not waiting.done()  # still retrying: Redis is away
        await asyncio.to_thread(redis.start)
        assert [w["id"] for w in await asyncio.wait_for(waiting, 10)] == ["w1"]
        await fast.close()  # shares the patient handle's connections: closing it leaves them open
        assert [w["id"] for w in await patient.workers()] == ["w1"]
        await patient.close()

    asyncio.run(scenario())


def _batch(n: int = 0) -> Batch:
    return Batch(id=f"b{n}-{uuid.uuid4().hex[:6]}", job_id="job_1", generation=n, model="m", context="c", work={})


def test_dead_consumers_batch_is_taken_over_when_its_heartbeat_expires_and_deaths_count(redis_server):
    """claim_idle is 60 s: only the expired heartbeat can explain a takeover within a second. Every takeover is
    a delivery, so a batch that kills each worker it reaches is dead-lettered with a clear error."""

    async def scenario():
        queue = RedisQueue(redis_server.url, namespace=f"t{uuid.uuid4().hex[:8]}", max_deliveries=3, dead_grace=0.2)
        batch = _batch()
        await queue.submit([batch])
        await queue.heartbeat({"id": "w1"}, ttl=0.5)
        assert (await queue.take("w1", ["m"], timeout=1)).deliveries == 1
        await queue.heartbeat({"id": "w2"}, ttl=0.5)
        assert await queue.take("w2", ["m"], timeout=0.1) is None  # w1 is alive: its batch stays its own
        await asyncio.sleep(0.7)  # w1 dies: its heartbeat expires
        started = time.monotonic()
        second = await queue.take("w2", ["m"], timeout=1)
        assert second.batch.id == batch.id and second.deliveries == 2
        assert time.monotonic() - started < 0.5
        await queue.heartbeat({"id": "w3"}, ttl=5)
        await queue.leave("w2")  # a worker that stops drops its heartbeat: its batch goes without waiting for expiry
        await asyncio.sleep(0.3)  # dead_grace
        third = await queue.take("w3", ["m"], timeout=1)
        assert third.deliveries == 3
        await queue.leave("w3")
        await asyncio.sleep(0.3)
        await queue.heartbeat({"id": "w4"}, ttl=5)
        assert await queue.take("w4", ["m"], timeout=0.5) is None  # a fourth delivery would pass max_deliveries
        result = (await queue.wait("job_1", [batch.id], timeout=1))[batch.id]
        assert not result.ok and result.error.startswith("batch failed 3 times")
        assert "died or stalled while processing it (3 times" in result.error
        assert [d["batch_id"] for d in await queue.dead_letters()] == [batch.id]
        assert (await queue.depth())["m"] == 0
        await queue.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ processes while Redis is away
def test_redis_down_the_api_answers_at_once_and_the_job_finishes_after_redis_returns(tmp_path, redis, procs):
    """The store is the source of truth: a job submitted while Redis is down is accepted; the runner that holds
    it hands it back on SIGTERM within seconds, and another runner finishes it once Redis is back."""
    data, port = tmp_path / "data", free_port()
    key = _key(data)
    procs.append(serve(data, redis.url, port, "--no-run-jobs", models="fake:0.05", env={"NOGRAD_READY_TIMEOUT": "0.5"}))
    runner_args = ["runner", "--redis-url", redis.url, "--data-dir", str(data), "--lease-seconds", "3"]
    first_runner = Proc(runner_args, tmp_path / "runner-1.log").start()
    procs.append(first_runner)
    procs.append(worker(redis.url, "fake:0.05", tmp_path / "worker.log"))
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        wait_until(lambda: api.get("/v1/workers").json(), 60, "the worker")
        redis.stop()
        ready, seconds = _timed(lambda: api.get("/readyz"))
        assert ready.status_code == 503 and ready.json()["queue"] != "ok" and seconds < 2, (ready.text, seconds)
        assert ready.json()["store"] == "ok"
        assert _timed(lambda: api.get("/healthz"))[0].status_code == 503
        live, seconds = _timed(lambda: api.get("/livez"))
        assert live.status_code == 200 and seconds < 1
        models, seconds = _timed(lambda: api.get("/v1/models"))
        assert models.status_code == 200 and [m["name"] for m in models.json()] == ["fake:0.05"] and seconds < 2
        workers, seconds = _timed(lambda: api.get("/v1/workers"))
        assert workers.status_code == 503 and workers.headers["retry-after"] and seconds < 2
        created, seconds = _timed(lambda: api.post("/v1/jobs", json={**JOB, "model": "fake:0.05"}))
        assert created.status_code == 201 and seconds < 2, (created.text, seconds)
        job_id = created.json()["id"]
        wait_until(lambda: _lease(data, job_id)[1] is not None, 30, "the first runner's claim")
        code, seconds = _stopped_within(first_runner, 10)
        assert code == 0 and seconds < 5, (code, seconds, first_runner.output()[-2000:])
        assert _lease(data, job_id) == ("running", None)  # handed back: it resumes from its checkpoint
        procs.append(Proc(runner_args, tmp_path / "runner-2.log").start())
        time.sleep(2)  # the second runner claims the job and waits for Redis
        redis.start()
        job = wait_until(
            lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(
                api.get(f"/v1/jobs/{job_id}").json()
            ),
            90,
            "the job",
        )
        assert job["status"] == "succeeded" and job["calls"] == JOB["budget"], job
        assert api.get("/readyz").status_code == 200


def test_worker_and_serve_exit_within_seconds_of_sigterm_while_redis_is_down(tmp_path, redis, procs):
    """Before: a worker took ~125 s (its take and heartbeat retried Redis for 120 s before looking at the signal).
    `nograd serve` here runs the job runner and an embedded worker, with a job in progress it hands back."""
    data, port = tmp_path / "data", free_port()
    key = _key(data)
    args = ["serve", "--data-dir", str(data), "--port", str(port), "--models", "fake", "--redis-url", redis.url]
    api_proc = Proc(args, tmp_path / "serve.log").start()
    worker_proc = worker(redis.url, "fake", tmp_path / "worker.log", "--id", "w-sigterm")
    procs += [api_proc, worker_proc]
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        wait_until(lambda: answers(f"{base}/readyz", api_proc), 60, "nograd serve")
        wait_until(lambda: "serving" in worker_proc.output(), 60, "the worker")
        job_id = api.post("/v1/jobs", json={**JOB, "model": "fake", "budget": 100_000}).json()["id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}/history").json()["count"] >= 1, 60, "a generation")
    redis.stop()
    time.sleep(2)  # both now retry their queue calls
    (worker_code, worker_seconds), (api_code, api_seconds) = _stopped_within_all([worker_proc, api_proc], 20)
    print(f"\nSIGTERM with Redis down: worker exited in {worker_seconds:.1f} s, serve in {api_seconds:.1f} s")
    assert worker_code == 0 and worker_seconds < 4, (worker_seconds, worker_proc.output()[-2000:])
    assert "stopped after" in worker_proc.output()
    assert api_code is not None and api_seconds < 5, (api_seconds, api_proc.output()[-3000:])
    assert _lease(data, job_id) == ("running", None)  # handed back


# ------------------------------------------------------------------ graceful shutdown
def test_serve_sigterm_with_an_open_event_stream_ends_within_grace_and_hands_the_job_back(tmp_path, procs):
    data, port = tmp_path / "data", free_port()
    key = _key(data)
    api_proc = serve(data, None, port, models="fake:0.5", env={"NOGRAD_SHUTDOWN_GRACE": "2"})
    procs.append(api_proc)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as api:
        job_id = api.post("/v1/jobs", json={**JOB, "model": "fake:0.5", "budget": 2000}).json()["id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}/history").json()["count"] >= 1, 60, "a generation")
        events, ended = [], threading.Event()

        def follow() -> None:
            try:
                with httpx.stream("GET", f"{api.base_url}/v1/jobs/{job_id}/events", headers=headers, timeout=60) as r:
                    for line in r.iter_lines():
                        events.append(line)
            except httpx.HTTPError:
                pass
            ended.set()

        threading.Thread(target=follow, daemon=True).start()
        wait_until(lambda: any(line.startswith("event:") for line in events), 20, "the stream's first event")
        code, seconds = _stopped_within(api_proc, 30)
        print(f"\nnograd serve SIGTERM with an open event stream: exited in {seconds:.1f} s")
    assert code is not None and seconds < 2 + 4, (seconds, api_proc.output()[-3000:])
    assert ended.wait(5)  # the stream was closed, not left hanging
    status, owner = _lease(data, job_id)
    assert status in ("running", "queued") and owner is None, (status, owner)


# ------------------------------------------------------------------ fast recovery
def _holder(broker: SyncRedis, stream: str) -> str | None:
    """The consumer (worker id) holding a batch of `stream`, if any."""
    if not broker.exists(stream):
        return None
    names = [c["name"].decode() for c in broker.xpending(stream, "workers")["consumers"] if c["pending"]]
    return names[0] if names else None


def test_a_killed_workers_batch_is_finished_by_another_within_seconds(tmp_path, redis, procs):
    """Default heartbeat (2 s, expiry after 3) and claim_idle (60 s); each batch takes 2 s. The goal: a job whose
    worker is killed mid-batch loses at most 10 s."""
    data, port = tmp_path / "data", free_port()
    key = _key(data)
    procs.append(serve(data, redis.url, port, models="fake:2"))
    workers = {}
    for name in ("w-a", "w-b"):
        args = ["worker", "--redis-url", redis.url, "--model", "fake:2", "--id", name, "--heartbeat", "2"]
        workers[name] = Proc(args, tmp_path / f"{name}.log").start()
        procs.append(workers[name])
    stream = "nograd:q:fake:2"
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as api:
        wait_until(lambda: len(api.get("/v1/workers").json()) == 2, 60, "two workers")
        job = {**JOB, "model": "fake:2", "budget": 40, "dev_every": 1000}  # one 2 s batch per generation
        job_id = api.post("/v1/jobs", json=job).json()["id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}/history").json()["count"] >= 1, 60, "a generation")
        broker = SyncRedis.from_url(redis.url)
        victim = wait_until(lambda: _holder(broker, stream), 30, "a batch in progress")
        time.sleep(0.5)  # mid-batch
        done = api.get(f"/v1/jobs/{job_id}/history").json()["count"]  # the batch held is the next generation's
        workers[victim].kill()
        killed = time.monotonic()
        rescuer = next(name for name in workers if name != victim)
        wait_until(lambda: _holder(broker, stream) == rescuer, 15, "the takeover", interval=0.05)
        taken_over = time.monotonic() - killed
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}/history").json()["count"] > done, 20, "the next generation")
        recovered = time.monotonic() - killed
        broker.close()
    print(
        f"\nworker kill recovery (fake:2, heartbeat 2 s): taken over {taken_over:.1f} s, batch done {recovered:.1f} s"
    )
    assert "redelivered" in workers[rescuer].output()
    assert recovered < 10, (taken_over, recovered)
