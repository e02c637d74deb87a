"""A job's settings are resolved once, at submit time, and stored: the executor runs what is stored. A job
checkpointed, then resumed after a release changed the method's default, finishes with the settings it started
with and the result an uninterrupted run gives."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from nograd.artifacts import read_prompt
from nograd.config import ResolvedConfig
from nograd.engine import FakeEngine
from nograd.methods import METHODS
from nograd.service.api import create_app
from nograd.service.executor import JobExecutor
from nograd.service.queue import MemoryQueue
from nograd.service.settings import Settings
from nograd.service.store import Store
from nograd.service.worker import Worker

JOB = {"method": "bbt", "task": "trec", "model": "fake", "budget": 120, "dev_every": 40, "options": {"dim": 8}}


def _submit(settings: Settings, store: Store) -> dict:
    with TestClient(create_app(settings, store=store), base_url="http://127.0.0.1") as http:  # auth off: loopback
        created = http.post("/v1/jobs", json=JOB)
    assert created.status_code == 201, created.text
    return created.json()


async def _execute(store: Store, settings: Settings, job_id: str, stop_at_generation: int | None = None) -> None:
    """Run the store's jobs on a fresh executor (a restarted runner) until `job_id` reaches the generation, or
    finishes."""
    queue, stop = MemoryQueue(), asyncio.Event()
    worker = asyncio.create_task(Worker(queue, {"fake": FakeEngine()}, poll=0.01).run(stop))
    executor = JobExecutor(store, queue, data_dir=settings.data_dir, lease_seconds=5.0, poll=0.02)
    runner = asyncio.create_task(executor.run(stop))
    while True:
        job = store.get_job(job_id)
        if job["status"] != "running" and job["status"] != "queued":
            break
        if stop_at_generation is not None and job["generation"] >= stop_at_generation:
            break
        await asyncio.sleep(0.02)
    stop.set()  # the executor hands a running job back; its checkpoint stays
    await asyncio.gather(runner, worker)


@pytest.fixture
def service(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=False, run_jobs=False)
    settings.data_dir.mkdir(parents=True)
    store = Store(settings.db_url)
    yield settings, store
    store.close()


def test_the_stored_config_is_the_resolved_one(service):
    settings, store = service
    job = _submit(settings, store)
    stored = ResolvedConfig.from_dict(store.get_job(job["id"])["config"])
    assert (stored.popsize, stored.alpha, stored.lr, stored.chat_template) == (20, 0.5, 1e-4, False)
    assert job["config"]["popsize"] == 20  # and the job's page shows what it runs with


def test_a_job_resumed_after_a_default_changed_finishes_with_its_stored_settings(service, monkeypatch):
    settings, store = service
    straight = _submit(settings, store)
    asyncio.run(_execute(store, settings, straight["id"]))
    interrupted = _submit(settings, store)
    asyncio.run(_execute(store, settings, interrupted["id"], stop_at_generation=2))
    paused = store.get_job(interrupted["id"])
    assert paused["status"] == "running" and 2 <= paused["generation"] < 6 and paused["calls"] < 120

    # A new release: bbt's default population changes while the job waits.
    monkeypatch.setitem(METHODS, "bbt", dataclasses.replace(METHODS["bbt"], defaults={"alpha": 0.5, "popsize": 7}))
    asyncio.run(_execute(store, settings, interrupted["id"]))

    first, second = store.get_job(straight["id"]), store.get_job(interrupted["id"])
    assert first["status"] == second["status"] == "succeeded"
    assert [len(h["losses"]) for h in store.history(second["id"]) if "losses" in h] == [20] * 6
    assert (second["calls"], second["best_dev_metric"], second["test_metric"]) == (
        first["calls"],
        first["best_dev_metric"],
        first["test_metric"],
    )
    np.testing.assert_array_equal(
        read_prompt(store.artifact(second["id"]))["x"], read_prompt(store.artifact(first["id"]))["x"]
    )
    # ... while a job submitted now gets the new default.
    assert store.get_job(_submit(settings, store)["id"])["config"]["popsize"] == 7


def test_a_job_stored_by_nograd_0_1_without_resolved_settings_still_runs(service):
    """0.1 stored the submitted options only (and resolved them whenever the job ran)."""
    settings, store = service
    job = store.create_job(
        tenant="local",
        method="bbt",
        task="trec",
        dataset_id=None,
        model="fake",
        config={
            "method": "bbt",
            "model": "fake",
            "budget": 40,
            "seed": 0,
            "k_shot": 16,
            "dev_every": 20,
            "task": "trec",
            "dim": 8,
        },
        budget=40,
    )
    asyncio.run(_execute(store, settings, job["id"]))
    done = store.get_job(job["id"])
    assert done["status"] == "succeeded" and done["calls"] == 40, done["error"]
    assert [len(h["losses"]) for h in store.history(job["id"]) if "losses" in h] == [20, 20]
