"""Checkpoints record the versions of cma, nevergrad and numpy they were written with; a runner whose versions of
the libraries the job's optimizer draws with differ fails the job instead of resuming it, while an unaltered
checkpoint, one that differs only in a library the optimizer does not use, and one written before versions were
recorded all resume to the prompt an uninterrupted run gives."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from contextlib import closing
from importlib import metadata

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from nograd.artifacts import read_prompt
from nograd.engine import FakeEngine
from nograd.optimizers import make_optimizer, state_to_json
from nograd.service.api import create_app
from nograd.service.checkpoints import CheckpointVersionError, dump_checkpoint, library_versions, load_checkpoint
from nograd.service.executor import JobExecutor
from nograd.service.queue import MemoryQueue
from nograd.service.settings import Settings
from nograd.service.store import Store, jobs
from nograd.service.worker import Worker

JOB = {"method": "bbt", "task": "trec", "model": "fake", "budget": 120, "dev_every": 40, "options": {"dim": 8}}


def _submit(settings: Settings, store: Store) -> str:
    with TestClient(create_app(settings, store=store), base_url="http://127.0.0.1") as http:  # auth off: loopback
        created = http.post("/v1/jobs", json=JOB)
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def _execute(store: Store, settings: Settings, job_id: str, stop_at_generation: int | None = None) -> None:
    """Run the store's jobs on a fresh executor (a restarted runner) until `job_id` reaches the generation, or
    finishes."""
    queue, stop = MemoryQueue(), asyncio.Event()
    worker = asyncio.create_task(Worker(queue, {"fake": FakeEngine()}, poll=0.01).run(stop))
    executor = JobExecutor(store, queue, data_dir=settings.data_dir, lease_seconds=5.0, poll=0.02)
    runner = asyncio.create_task(executor.run(stop))
    while True:
        job = store.get_job(job_id)
        if job["status"] not in ("running", "queued"):
            break
        if stop_at_generation is not None and job["generation"] >= stop_at_generation:
            break
        await asyncio.sleep(0.02)
    stop.set()  # the executor hands a running job back; its checkpoint stays
    await asyncio.gather(runner, worker)


def _checkpoint(store: Store, job_id: str) -> dict:
    return json.loads(store.get_job(job_id, with_checkpoint=True)["checkpoint"])


def _rewrite_checkpoint(store: Store, job_id: str, checkpoint: dict) -> None:
    """What another runner's release would have written (the store has no API to edit a checkpoint)."""
    with store.engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(checkpoint=json.dumps(checkpoint)))


def _settings(data_dir) -> Settings:
    settings = Settings(data_dir=data_dir, models=["fake"], auth=False, run_jobs=False)
    settings.data_dir.mkdir(parents=True)
    return settings


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with a job that ran straight through and the same job stopped after generation 2, checkpointed.
    Stopped once per module: each test resumes its own copy."""
    settings = _settings(tmp_path_factory.mktemp("template") / "data")
    store = Store(settings.db_url)
    try:
        straight = _submit(settings, store)
        asyncio.run(_execute(store, settings, straight))
        interrupted = _submit(settings, store)
        asyncio.run(_execute(store, settings, interrupted, stop_at_generation=2))
        job = store.get_job(interrupted)
        assert job["status"] == "running" and 2 <= job["generation"] < 6, job
    finally:
        store.close()
    return settings.data_dir / "nograd.db", straight, interrupted


@pytest.fixture
def paused(template, tmp_path):
    database, straight, interrupted = template
    settings = _settings(tmp_path / "data")
    with (
        closing(sqlite3.connect(database)) as source,
        closing(sqlite3.connect(settings.data_dir / "nograd.db")) as copy,
    ):
        source.backup(copy)
    store = Store(settings.db_url)
    yield settings, store, straight, interrupted
    store.close()


def _assert_same_result(store: Store, first_id: str, second_id: str) -> None:
    first, second = store.get_job(first_id), store.get_job(second_id)
    assert first["status"] == second["status"] == "succeeded", second["error"]
    assert (second["calls"], second["best_dev_metric"], second["test_metric"]) == (
        first["calls"],
        first["best_dev_metric"],
        first["test_metric"],
    )
    np.testing.assert_array_equal(
        read_prompt(store.artifact(second_id))["x"], read_prompt(store.artifact(first_id))["x"]
    )


def test_a_checkpoint_records_the_installed_library_versions(paused):
    _, store, _, interrupted = paused
    versions = _checkpoint(store, interrupted)["versions"]
    assert versions == {name: metadata.version(name) for name in ("cma", "nevergrad", "numpy")}


def test_an_unaltered_checkpoint_resumes_to_the_uninterrupted_result(paused):
    settings, store, straight, interrupted = paused
    asyncio.run(_execute(store, settings, interrupted))
    _assert_same_result(store, straight, interrupted)


def test_a_checkpoint_written_with_another_cma_fails_the_resumed_job(paused):
    settings, store, _, interrupted = paused
    checkpoint = _checkpoint(store, interrupted)
    checkpoint["versions"]["cma"] = "4.0.0"
    _rewrite_checkpoint(store, interrupted, checkpoint)
    asyncio.run(_execute(store, settings, interrupted))
    job = store.get_job(interrupted)
    assert job["status"] == "failed"
    assert job["error"] == (
        f"checkpoint written with cma 4.0.0, this runner has cma {metadata.version('cma')}: resume would not "
        "replay the same candidates; submit the job again or run it where cma==4.0.0 is installed"
    )


def test_another_version_of_a_library_the_optimizer_does_not_use_still_resumes(paused):
    """bbt's CMA-ES is pycma's: a nevergrad upgrade does not change its candidates."""
    settings, store, straight, interrupted = paused
    checkpoint = _checkpoint(store, interrupted)
    checkpoint["versions"]["nevergrad"] = "0.0.1"
    _rewrite_checkpoint(store, interrupted, checkpoint)
    asyncio.run(_execute(store, settings, interrupted))
    _assert_same_result(store, straight, interrupted)


def test_a_checkpoint_without_versions_resumes_as_before_with_a_warning(paused, caplog):
    settings, store, straight, interrupted = paused
    checkpoint = _checkpoint(store, interrupted)
    del checkpoint["versions"]  # as nograd wrote checkpoints before it recorded them
    _rewrite_checkpoint(store, interrupted, checkpoint)
    with caplog.at_level(logging.WARNING, logger="nograd.jobs"):
        asyncio.run(_execute(store, settings, interrupted))
    _assert_same_result(store, straight, interrupted)
    assert any(
        f"job {interrupted}: its checkpoint does not record library versions" in r.getMessage() for r in caplog.records
    )


def test_a_runner_that_rounds_differently_resumes_and_says_so(paused, caplog, monkeypatch):
    """A runner on a CPU whose BLAS rounds differently replays candidates that differ in the last digits: the job
    resumes (to a prompt equal to the uninterrupted one up to rounding, not bit for bit) and its log says why."""
    from nograd.optimizers import CMA

    def ask(opt):  # every candidate pycma asks, moved by 1e-13 of itself: another kernel's rounding
        opt._asked = [x * (1 + 1e-13) for x in opt._es.ask()]
        return np.asarray(opt._asked, dtype=np.float64)

    settings, store, straight, interrupted = paused
    monkeypatch.setattr(CMA, "_ask", ask)
    with caplog.at_level(logging.WARNING, logger="nograd.jobs"):
        asyncio.run(_execute(store, settings, interrupted))
    job = store.get_job(interrupted)
    assert job["status"] == "succeeded" and job["calls"] == store.get_job(straight)["calls"], job["error"]
    notes = [r.getMessage() for r in caplog.records if "up to rounding" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith(f"job {interrupted}: restored 'cma' state"), notes
    np.testing.assert_allclose(
        read_prompt(store.artifact(interrupted))["x"], read_prompt(store.artifact(straight))["x"], rtol=1e-6, atol=1e-9
    )


def _search_state(optimizer: dict) -> dict:
    return {"version": 1, "optimizer": optimizer}


@pytest.mark.parametrize(
    ("optimizer", "changed", "refused"),
    [
        ("cma", "cma", True),
        ("cma", "nevergrad", False),
        ("cma", "numpy", True),
        ("ng:TwoPointsDE", "nevergrad", True),
        ("ng:TwoPointsDE", "cma", True),  # nevergrad's CMA family delegates to pycma
    ],
)
def test_which_version_changes_refuse_a_resume(optimizer, changed, refused):
    state = make_optimizer(optimizer, dim=4, popsize=6, seed=0, budget=60).state_dict()
    text = dump_checkpoint(_search_state(state))
    written = json.loads(text)
    written["versions"][changed] = "0.0.1"
    if refused:
        with pytest.raises(CheckpointVersionError, match=f"written with {changed} 0.0.1, this runner has {changed} "):
            load_checkpoint(json.dumps(written), "job")
    else:
        assert "versions" not in load_checkpoint(json.dumps(written), "job")


def test_several_changed_versions_are_all_named():
    state = make_optimizer("cma", dim=4, popsize=6, seed=0, budget=60).state_dict()
    here = library_versions()
    written = json.loads(
        state_to_json({**_search_state(state), "versions": {**here, "cma": "4.0.0", "numpy": "1.26.0"}})
    )
    with pytest.raises(CheckpointVersionError) as refused:
        load_checkpoint(json.dumps(written), "job")
    assert str(refused.value) == (
        f"checkpoint written with cma 4.0.0 and numpy 1.26.0, this runner has cma {here['cma']} and numpy "
        f"{here['numpy']}: resume would not replay the same candidates; submit the job again or run it where "
        "cma==4.0.0 numpy==1.26.0 are installed"
    )
