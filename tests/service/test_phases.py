"""A job says what it is doing: the run's phases in order (pipeline), in `GET /v1/jobs/{id}` and the event stream
while the job runs (service), and none once it ended."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from apiclient import Api
from runs import resolved
from test_api import make_api

from nograd.clients.local import LocalClient
from nograd.engine.fake import FakeEngine
from nograd.pipeline import run
from nograd.progress import LABELS, Phase

JOB = {"method": "bbt", "task": "trec", "budget": 40, "dev_every": 20, "options": {"dim": 8, "popsize": 10}}


def _phases(config, tmp_path=None) -> list[Phase]:
    seen: list[Phase] = []
    asyncio.run(run(config, LocalClient(FakeEngine(model_id="fake")), out_dir=tmp_path, on_phase=seen.append))
    return seen


def test_a_search_reports_its_phases_in_order_with_counts(tmp_path):
    config = resolved(task="trec", model="fake", method="bbt", budget=40, popsize=10, dim=8, dev_every=20)
    seen = _phases(config, tmp_path / "run")
    names = [p.name for p in seen]
    # initial, then generations with a dev round every 20 calls, then the chosen prompt on train and test, saving
    collapsed = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
    assert collapsed == ["initial", "dev", "search", "dev", "search", "dev", "final_train", "test", "saving"]
    search = [p for p in seen if p.name == "search"]
    assert [(p.done, p.total, p.unit) for p in search] == [(c, 40, "calls") for c in (0, 10, 20, 30)]
    tuned = [p for p in seen if p.name == "test" and p.label == LABELS["test"]]
    n_test = tuned[0].total
    assert n_test > 256  # more than one request of examples, so the count moves in between
    assert [p.done for p in tuned] == [0, 256, n_test] and {p.unit for p in tuned} == {"examples"}
    assert len({p.since for p in tuned}) == 1  # one phase, advancing
    # then the manual prompt on test, for the analysis's comparison (once per task and model in a process)
    manual = [p for p in seen if p.name == "test" and p.label != LABELS["test"]]
    assert [p.done for p in manual] in ([0, 256, n_test], []) and all("manual" in p.label for p in manual)
    assert all(p.label == LABELS[p.name] for p in seen if p.name != "test")


def test_a_baseline_has_no_search_phase():
    names = {p.name for p in _phases(resolved(task="trec", model="fake", method="manual"))}
    assert names == {"final_train", "dev", "test"}


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'thinking'"):
        Phase("thinking")


@pytest.fixture
def api(tmp_path):
    client, _ = make_api(tmp_path, models=["fake:0.05"])
    with client:
        store = client.app.state.store
        client.app.state.events_poll = 0.05
        yield Api(client, {"alice": store.create_key("alice")}, {"model": "fake:0.05", **JOB})


def test_a_running_job_shows_its_phase_and_an_ended_one_none(api):
    job = api.submit()
    assert job["phase"]["name"] == "queued" and job["phase"]["label"] == LABELS["queued"]
    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        job = api("GET", f"/v1/jobs/{job['id']}").json()
        if job["status"] != "running":
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            continue
        phase = job["phase"]
        assert phase is not None and phase["name"] in LABELS
        if phase["name"] == "search":
            assert phase["done"] == job["calls"] and phase["total"] == 40
        seen.append(phase["name"])
        time.sleep(0.01)
    assert job["status"] == "succeeded", job
    assert job["phase"] is None
    assert "search" in seen and "test" in seen, seen  # fake:0.05: each request takes 50 ms, long enough to see


def test_the_event_stream_carries_the_phase(api):
    job = api.submit()
    names = []

    def follow():
        with api.stream(job["id"]) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "job":
                    snapshot = json.loads(line[6:])
                    names.append(None if snapshot["phase"] is None else snapshot["phase"]["name"])
                elif event == "end":
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    api.wait(job["id"])
    thread.join(30)
    assert "test" in names and names[-1] is None, names
