"""`GET /v1/jobs/{id}/analysis` in-process (TestClient; the embedded queue and worker serving the fake model): what a
finished job stores about its prompt, tenant isolation, and the 404s before there is an analysis."""

from __future__ import annotations

import pytest
from apiclient import Api
from fastapi.testclient import TestClient

from nograd.service.api import create_app
from nograd.service.settings import Settings
from nograd.service.store import Status, Store

JOB = {
    "method": "bbt",
    "task": "trec",
    "model": "fake",
    "budget": 40,
    "dev_every": 20,
    "options": {"dim": 8, "popsize": 10},
}


@pytest.fixture
def api(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=True, lease_seconds=2.0)
    client = TestClient(create_app(settings), base_url="http://127.0.0.1")
    with client:
        store = client.app.state.store
        yield Api(client, {"alice": store.create_key("alice"), "bob": store.create_key("bob")}, JOB)


def _analysis(api: Api, job_id: str, tenant: str = "alice"):
    return api("GET", f"/v1/jobs/{job_id}/analysis", tenant)


def test_a_finished_job_explains_itself_to_its_tenant_only(api):
    job = api.submit()
    finished = api.wait(job["id"])
    assert finished["status"] == "succeeded", finished
    response = _analysis(api, job["id"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["job_id"] == job["id"] and body["metric_name"] == "accuracy"
    labels = body["labels"]
    assert len(labels) == 6 and body["n_test"] > 0  # trec's six classes
    assert body["prompt"]["kind"] == "soft" and body["prompt"]["n_tokens"] == 50
    assert body["prompt"]["nearest_tokens"] is None  # the fake model has no vocabulary to be near to
    assert body["tuned"]["metric"] == pytest.approx(finished["test_metric"])
    for side in ("tuned", "manual"):
        counts = body[side]["confusion"]
        assert len(counts) == len(labels) and all(len(row) == len(labels) for row in counts)
        assert sum(map(sum, counts)) == body["n_test"]
    changed = body["changed"]
    assert len(changed["fixed"]) == min(changed["n_fixed"], changed["limit"]) and changed["n_fixed"] > 0
    for example in changed["fixed"]:
        assert example["gold"] == example["tuned"] != example["manual"] and example["text"]
    for example in changed["broken"]:
        assert example["gold"] == example["manual"] != example["tuned"]
    # bob sees no more of alice's job than that it does not exist for him
    other = _analysis(api, job["id"], "bob")
    assert other.status_code == 404 and job["id"] in other.json()["detail"]
    assert _analysis(api, "job_doesnotexist").status_code == 404
    assert api("GET", f"/v1/jobs/{job['id']}/analysis", None).status_code == 401


def test_a_baseline_compares_with_itself(api):
    job = api.submit(method="manual")
    assert api.wait(job["id"])["status"] == "succeeded"
    body = _analysis(api, job["id"]).json()
    assert body["prompt"]["kind"] == "manual" and body["prompt"]["template"]
    assert body["tuned"] == body["manual"] and body["changed"]["n_fixed"] == body["changed"]["n_broken"] == 0


def test_no_analysis_before_the_job_succeeded(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=True, run_jobs=False)  # jobs wait here
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        store = client.app.state.store
        _no_analysis_yet(Api(client, {"alice": store.create_key("alice")}), store)


def _no_analysis_yet(api: Api, store: Store) -> None:
    job = store.create_job(
        tenant="alice", method="bbt", task="trec", dataset_id=None, model="fake", config={}, budget=10
    )
    assert "is queued" in _analysis(api, job["id"]).json()["detail"]
    store.claim_jobs("elsewhere", 600.0, 10)
    assert store.get_job(job["id"])["status"] == "running"
    running = _analysis(api, job["id"])
    assert (
        running.status_code == 404 and "is running; its analysis exists once it succeeded" in running.json()["detail"]
    )
    store.finish_job(job["id"], "elsewhere", Status.failed, error="boom")
    assert "is failed" in _analysis(api, job["id"]).json()["detail"]


def test_the_store_keeps_the_analysis_with_the_result(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nograd.db'}")
    job = store.create_job(tenant="t", method="manual", task="mr", dataset_id=None, model="fake", config={}, budget=0)
    assert store.claim_jobs("runner", 30.0, 1)
    assert store.analysis(job["id"]) is None
    analysis = {"version": 1, "labels": ["neg", "pos"], "prompt": {"kind": "manual"}, "text": "ünïcode"}
    assert store.finish_job(job["id"], "runner", Status.succeeded, result={"calls": 0}, analysis=analysis)
    assert store.analysis(job["id"]) == analysis
    assert Store(store.url).analysis(job["id"]) == analysis  # another replica on the same database reads it too
