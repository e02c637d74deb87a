"""End to end: `nograd serve` with a private Redis, separate `nograd worker` processes, the HTTP client.
Crash cases: kill -9 a worker mid-batch, kill -9 the API/runner mid-job, stop and restart Redis mid-job.
The workers serve the fixed-latency fake model (deterministic losses), so runs are fast and reproducible."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from procs import ROOT, RedisServer, create_key, free_port, serve, wait_until, worker

from nograd.artifacts import read_prompt
from nograd.sdk import Client
from nograd.service.store import Store

pytestmark = pytest.mark.redis

JOB = {"method": "bbt", "task": "trec", "budget": 80, "seed": 3, "dev_every": 30, "options": {"dim": 16, "popsize": 10}}


@pytest.fixture
def deployment(tmp_path):
    """A Redis-backed service with auth on; yields a dict with the pieces and cleans up everything."""
    redis = RedisServer(tmp_path / "redis").start()
    data = tmp_path / "data"
    key = create_key(data, "alice")
    port = free_port()
    procs = {"workers": []}
    env = {"redis": redis, "data": data, "port": port, "key": key, "procs": procs, "tmp": tmp_path}

    def start_api():
        procs["api"] = serve(data, redis.url, port, "--lease-seconds", "2", models="fake:0.3")
        return procs["api"]

    def start_worker(name: str, *extra: str):
        proc = worker(redis.url, "fake:0.3", tmp_path / f"worker-{name}.log", *extra)
        procs["workers"].append(proc)
        return proc

    env.update(start_api=start_api, start_worker=start_worker)
    yield env
    for proc in procs["workers"]:
        proc.kill()
    if "api" in procs:
        procs["api"].kill()
    redis.stop()


def _client(env) -> Client:
    return Client(f"http://127.0.0.1:{env['port']}", env["key"])


def _finished(api: Client, job_id: str, timeout: float = 120) -> dict:
    return wait_until(
        lambda: (lambda j: j if j["status"] in ("succeeded", "failed", "cancelled") else None)(api.job(job_id)),
        timeout,
        f"job {job_id}",
    )


def _z(api: Client, job_id: str) -> np.ndarray:
    return read_prompt(api.prompt(job_id))["x"]


def _check_complete(api: Client, job: dict, budget: int = JOB["budget"]) -> None:
    assert job["status"] == "succeeded", job
    assert job["calls"] == job["budget"] == budget
    history = api.history(job["id"])
    generations = [h["generation"] for h in history]
    assert generations == list(range(len(generations)))  # no gaps, no duplicates
    assert history[-1]["calls"] == budget


def test_submit_over_http_completes_with_two_workers(deployment):
    deployment["start_api"]()
    deployment["start_worker"]("a")
    deployment["start_worker"]("b")
    with _client(deployment) as api:
        wait_until(lambda: len(api.workers()) == 2, 30, "two workers")
        job = api.submit(model="fake:0.3", **JOB)
        events = [event for event, _ in api.events(job["id"])]
        job = _finished(api, job["id"])
        _check_complete(api, job)
        assert "generation" in events and events[-1] == "end"
        assert job["test_metric"] is not None and job["best_dev_metric"] >= job["result"]["initial"]["dev_metric"]
        done = {w["id"]: w["batches_done"] for w in api.workers()}
        assert all(n > 0 for n in done.values()), done  # both workers took batches


def test_killed_worker_mid_batch_job_still_completes_with_exact_budget(deployment):
    deployment["start_api"]()
    victim = deployment["start_worker"]("victim")
    with _client(deployment) as api:
        wait_until(lambda: len(api.workers()) == 1, 30, "the first worker")
        job = api.submit(model="fake:0.3", **JOB)
        # Kill it while it holds a batch (its heartbeat names the batch in progress).
        wait_until(
            lambda: api.history(job["id"]) and any(w["current"] for w in api.workers()), 60, "a batch in progress"
        )
        victim.kill()
        rescuer = deployment["start_worker"]("rescuer", "--claim-idle", "1.5")
        job = _finished(api, job["id"])
        _check_complete(api, job)
        wait_until(lambda: "redelivered" in rescuer.output(), 10, "the rescuer's redelivery log line")


def test_api_restart_mid_job_resumes_to_the_identical_prompt(deployment):
    deployment["start_api"]()
    deployment["start_worker"]("a")
    with _client(deployment) as api:
        reference = api.submit(model="fake:0.3", **JOB)
        reference = _finished(api, reference["id"])
        _check_complete(api, reference)
        job = api.submit(model="fake:0.3", **JOB)
        wait_until(lambda: len(api.history(job["id"])) >= 3, 60, "three generations")
        deployment["procs"]["api"].kill()
    deployment["start_api"]()
    with _client(deployment) as api:
        job = _finished(api, job["id"])
        _check_complete(api, job)
        assert any("resumes" in line for line in deployment["procs"]["api"].output().splitlines())
        np.testing.assert_array_equal(_z(api, job["id"]), _z(api, reference["id"]))
        assert job["best_dev_metric"] == reference["best_dev_metric"]
        assert job["test_metric"] == reference["test_metric"]


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "data-lost"])
def test_redis_restart_mid_job_the_job_continues(deployment, persistent):
    """With AOF the queue survives the restart. Without persistence it comes back empty; the worker is also
    killed, so the batch in progress is gone too and only the runner's resubmission can finish the job."""
    redis = deployment["redis"]
    redis.persistent = persistent
    redis.stop()
    redis.start()
    deployment["start_api"]()
    first = deployment["start_worker"]("a")
    with _client(deployment) as api:
        job = api.submit(model="fake:0.3", **JOB)
        wait_until(lambda: len(api.history(job["id"])) >= 2, 60, "two generations")
        redis.stop()
        if not persistent:
            first.kill()
        assert api.job(job["id"])["status"] == "running"  # the API answers from its store without Redis
        redis.start()
        if not persistent:
            deployment["start_worker"]("b")
        job = _finished(api, job["id"])
        _check_complete(api, job)
    if not persistent:
        assert "resubmitting" in deployment["procs"]["api"].output()


LONG = 200


def test_two_replicas_on_postgres_one_dies_the_other_finishes_its_jobs(tmp_path, postgres_url):
    """The multi-replica deployment: two API/runner processes share PostgreSQL and Redis. Both see every job;
    when one is killed, the other takes over its running jobs once their leases expire and finishes them."""
    redis = RedisServer(tmp_path / "redis").start()
    procs = []
    try:
        key = subprocess.run(
            [
                sys.executable,
                "-m",
                "nograd.cli",
                "keys",
                "create",
                "--tenant",
                "alice",
                "--database-url",
                postgres_url,
                "--data-dir",
                str(tmp_path / "keys"),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ports = [free_port(), free_port()]

        def replica(i):
            procs.append(
                serve(
                    tmp_path / f"data{i}",
                    redis.url,
                    ports[i],
                    "--database-url",
                    postgres_url,
                    "--lease-seconds",
                    "2",
                    models="fake:0.3",
                )
            )
            return procs[-1]

        first_replica = replica(0)
        procs.append(worker(redis.url, "fake:0.3", tmp_path / "worker-a.log"))
        procs.append(worker(redis.url, "fake:0.3", tmp_path / "worker-b.log"))
        with Client(f"http://127.0.0.1:{ports[0]}", key) as first:
            # long enough (about 12 s each) that none ends while the second replica starts on a loaded machine
            ids = [first.submit(model="fake:0.3", **{**JOB, "seed": s, "budget": LONG})["id"] for s in range(4)]
            wait_until(lambda: all(len(first.history(i)) >= 2 for i in ids), 60, "every job under way")
        second_replica = replica(1)
        with Client(f"http://127.0.0.1:{ports[1]}", key) as second:
            assert {j["id"] for j in second.jobs()["data"]} == set(ids)  # one shared state
            first_replica.kill()  # it was running the four jobs (or those it had not finished)
            for job_id in ids:
                _check_complete(second, _finished(second, job_id), budget=LONG)
        # The jobs the first replica was still running when it died (on a slow machine it may finish some
        # before): each was taken over, once, and resumed from its checkpoint by the second.
        store = Store(postgres_url)
        takeovers = {job_id: store.get_job(job_id)["takeovers"] for job_id in ids}
        store.close()
        taken = [job_id for job_id in ids if takeovers[job_id]]
        assert taken and all(takeovers[job_id] == 1 for job_id in taken)
        assert second_replica.output().count("resumes at generation") == len(taken)
    finally:
        for proc in procs:
            proc.kill()
        redis.stop()


def test_worker_sigterm_finishes_its_batch_and_exits_cleanly(deployment):
    deployment["start_api"]()
    first = deployment["start_worker"]("first")
    with _client(deployment) as api:
        wait_until(lambda: len(api.workers()) == 1, 30, "the worker")
        job = api.submit(model="fake:0.3", **JOB)
        wait_until(
            lambda: api.history(job["id"]) and any(w["current"] for w in api.workers()), 60, "a batch in progress"
        )
        assert first.terminate() == 0
        assert "stopped after" in first.output()
        second = deployment["start_worker"]("second")
        _check_complete(api, _finished(api, job["id"]))
        assert "redelivered" not in second.output()  # nothing was left unacknowledged
