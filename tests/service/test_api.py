"""The REST API in-process (TestClient; embedded queue and worker serving the fake model): every route's
happy path and errors, tenancy, uploads, cancel, transfer (init_from), events."""

from __future__ import annotations

import json
import logging
import time

import pytest
from apiclient import Api
from fastapi.testclient import TestClient
from pydantic import ValidationError

from nograd.artifacts import read_prompt
from nograd.service.api import create_app
from nograd.service.settings import Settings

FAST = {
    "method": "bbt",
    "task": "trec",
    "model": "fake",
    "budget": 40,
    "dev_every": 20,
    "options": {"dim": 8, "popsize": 10},
}
CSV = "text,label\n" + "".join(f"great movie number {i},pos\nawful film number {i},neg\n" for i in range(40))


def make_api(tmp_path, **settings) -> tuple[TestClient, Settings]:
    options = dict(data_dir=tmp_path / "data", models=["fake"], auth=True, lease_seconds=2.0, max_upload_mb=0.05)
    options.update(settings)
    config = Settings(**options)
    # A loopback Host: with auth off the app serves no other name (DNS rebinding); TestClient's default is testserver.
    return TestClient(create_app(config), base_url="http://127.0.0.1"), config


@pytest.fixture
def api(tmp_path):
    client, _ = make_api(tmp_path)
    with client:
        store = client.app.state.store
        client.app.state.events_poll = 0.05
        yield Api(client, {"alice": store.create_key("alice"), "bob": store.create_key("bob")}, FAST)


def _operator(api: Api) -> dict:
    return {"Authorization": f"Bearer {api.client.app.state.operator_key}"}


def _field(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return ".".join(str(p) for p in detail[0]["loc"][1:])


# ------------------------------------------------------------------ auth
def test_missing_or_wrong_key_is_401_and_health_is_open(api):
    assert api("GET", "/v1/jobs", None).status_code == 401
    assert "Bearer" in api("GET", "/v1/jobs", None).json()["detail"]
    assert api("GET", "/v1/jobs", None, headers={"Authorization": "Bearer ng_nope_x"}).status_code == 401
    bad = api.keys["alice"][:-2] + "xx"
    assert api("GET", "/v1/jobs", None, headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    assert api("GET", "/v1/jobs", None, headers={"Authorization": api.keys["alice"]}).status_code == 401
    assert api("GET", "/healthz", None).json()["status"] == "ok"
    assert api("GET", "/metrics", None).status_code == 401  # the operator's (tests/abuse/test_hardening.py)
    assert "nograd_jobs" in api("GET", "/metrics", None, headers=_operator(api)).text


def test_auth_off_only_on_loopback(tmp_path):
    with pytest.raises(ValidationError, match="127.0.0.1"):
        Settings(data_dir=tmp_path, auth=False, host="0.0.0.0")
    client, _ = make_api(tmp_path, auth=False)
    with client:
        assert client.get("/v1/jobs").status_code == 200


def test_keys_are_stored_hashed_and_never_returned_or_logged(api, caplog):
    caplog.set_level(logging.DEBUG)
    job = api.submit()
    api.wait(job["id"])
    bodies = [api("GET", p).text for p in ("/v1/jobs", f"/v1/jobs/{job['id']}", "/v1/workers", "/v1/models")]
    bodies.append(api("GET", "/metrics", None, headers=_operator(api)).text)
    for key in api.keys.values():
        assert all(key not in body for body in bodies)
        assert key not in caplog.text
    store = api.client.app.state.store
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT key_hash FROM api_keys").scalars().all()
    assert len(rows) == 2 and all(api.keys["alice"] not in r and len(r) == 64 for r in rows)


# ------------------------------------------------------------------ jobs
def test_job_lifecycle_history_events_prompt(api):
    job = api.submit()
    assert job["status"] == "queued" and job["budget"] == 40
    events = []
    with api.client.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={"Authorization": f"Bearer {api.keys['alice']}"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
    assert events[-1] == "end" and "generation" in events and "job" in events
    done = api.wait(job["id"])
    assert done["status"] == "succeeded" and done["calls"] == 40 and done["test_metric"] is not None
    history = api("GET", f"/v1/jobs/{job['id']}/history").json()
    assert [h["generation"] for h in history["data"]] == list(range(5))
    assert history["data"][-1]["calls"] == 40 and len(history["data"][1]["losses"]) == 10
    later = api("GET", f"/v1/jobs/{job['id']}/history", params={"after": 3}).json()
    assert [h["generation"] for h in later["data"]] == [4]
    prompt = api("GET", f"/v1/jobs/{job['id']}/prompt")
    assert prompt.headers["content-type"] == "application/octet-stream"
    saved = read_prompt(prompt.content)
    assert saved["x"].shape == (8,) and saved["config"].budget == 40
    # resume the event stream after generation 2: only later generations come back
    with api.client.stream(
        "GET",
        f"/v1/jobs/{job['id']}/events",
        headers={"Authorization": f"Bearer {api.keys['alice']}", "Last-Event-ID": "2"},
    ) as r:
        ids = [int(line[3:]) for line in r.iter_lines() if line.startswith("id:")]
    assert ids == [3, 4]


def test_list_filters_and_paging(api):
    ids = [api.submit(method=m)["id"] for m in ("manual", "icl", "bbt")]
    for job_id in ids:
        api.wait(job_id)
    page = api("GET", "/v1/jobs", params={"limit": 2}).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    assert api("GET", "/v1/jobs", params={"method": "icl"}).json()["count"] == 1
    assert api("GET", "/v1/jobs", params={"status": "succeeded", "task": "trec"}).json()["count"] == 3
    assert api("GET", "/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert api("GET", "/v1/jobs", params={"limit": 0}).status_code == 422


def test_baselines_report_metrics_without_budget(api):
    job = api.wait(api.submit(method="manual")["id"])
    assert job["status"] == "succeeded" and job["budget"] == 0 and job["calls"] == 0
    assert job["result"]["dev_metric"] is not None


@pytest.mark.parametrize(
    "change, field",
    [
        ({"method": "sgd"}, "method"),
        ({"budget": 0}, "budget"),
        ({"budget": 5}, "budget"),  # less than one population
        ({"seed": -1}, "seed"),
        ({"options": {"popsize": 1}}, "options.popsize"),
        ({"options": {"nonsense": 1}}, "options.nonsense"),
        ({"options": {"optimizer": "adam"}}, "options.optimizer"),
        ({"options": {"mode": "deep"}}, "options.mode"),
        ({"task": "nope"}, "task"),
        ({"task": None}, "task"),
        ({"dataset_id": "ds_x"}, "task"),  # both task and dataset
        ({"task": None, "dataset_id": "ds_missing"}, "dataset_id"),
        ({"model": "gpt-9"}, "model"),
        ({"k_shot": 500}, "k_shot"),  # trec's smallest class has 77 examples
        ({"init_from": "job_missing"}, "init_from"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_job_config_is_422_naming_the_field(api, change, field):
    response = api("POST", "/v1/jobs", json={**FAST, **change})
    assert response.status_code == 422, response.text
    assert _field(response) == field
    assert api("GET", "/v1/jobs").json()["count"] == 0  # nothing was created


def test_malformed_json_body_is_422(api):
    response = api("POST", "/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_unknown_job_is_404_on_every_route(api):
    for method, path in (("GET", ""), ("GET", "/history"), ("GET", "/events"), ("GET", "/prompt"), ("POST", "/cancel")):
        response = api(method, f"/v1/jobs/job_unknown{path}")
        assert response.status_code == 404, (path, response.text)
        assert "not found" in response.json()["detail"]


def test_tenants_see_only_their_own_jobs_datasets_and_prompts(api):
    job = api.wait(api.submit()["id"])
    for method, path in (("GET", ""), ("GET", "/history"), ("GET", "/events"), ("GET", "/prompt"), ("POST", "/cancel")):
        response = api(method, f"/v1/jobs/{job['id']}{path}", tenant="bob")
        assert response.status_code == 404, path
    assert api("GET", "/v1/jobs", tenant="bob").json()["count"] == 0
    dataset = api(
        "POST",
        "/v1/datasets",
        files={"file": ("reviews.csv", CSV)},
        data={"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great"},
    ).json()
    assert api("GET", f"/v1/datasets/{dataset['id']}", tenant="bob").status_code == 404
    assert api("GET", "/v1/datasets", tenant="bob").json()["count"] == 0
    response = api("POST", "/v1/jobs", tenant="bob", json={**FAST, "task": None, "dataset_id": dataset["id"]})
    assert response.status_code == 422 and _field(response) == "dataset_id"
    response = api("POST", "/v1/jobs", tenant="bob", json={**FAST, "init_from": job["id"]})
    assert response.status_code == 422 and _field(response) == "init_from"


def test_cancel_queued_running_and_twice(api):
    # a job that cannot start (no worker serves its model yet) stays queued/waiting; cancel it twice
    job = api.submit(budget=100000, options={"dim": 8, "popsize": 10})
    first = api("POST", f"/v1/jobs/{job['id']}/cancel")
    assert first.status_code == 200 and first.json()["cancel_requested"]
    second = api("POST", f"/v1/jobs/{job['id']}/cancel")
    assert second.status_code == 409 and "nothing to cancel" in second.json()["detail"]
    done = api.wait(job["id"])
    assert done["status"] == "cancelled" and done["calls"] < 100000
    assert api("GET", f"/v1/jobs/{job['id']}/prompt").status_code == 409
    finished = api.wait(api.submit()["id"])
    assert api("POST", f"/v1/jobs/{finished['id']}/cancel").status_code == 409


def test_init_from_starts_at_the_source_prompt(api):
    source = api.wait(api.submit(seed=1)["id"])
    transfer = api.wait(api.submit(seed=1, init_from=source["id"], options={"popsize": 10})["id"])
    assert transfer["status"] == "succeeded", transfer
    assert transfer["config"]["dim"] == 8  # the projection settings come from the source prompt
    initial = api("GET", f"/v1/jobs/{transfer['id']}/history").json()["data"][0]["initial"]
    # same task and seed: starting at the source's prompt reproduces its dev metric before any search
    assert initial["dev_metric"] == pytest.approx(source["best_dev_metric"])
    other = api("POST", "/v1/jobs", json={**FAST, "method": "bbtv2", "init_from": source["id"]})
    assert other.status_code == 422 and _field(other) == "init_from"


# ------------------------------------------------------------------ datasets
def test_upload_then_run_a_job_on_it(api):
    response = api(
        "POST",
        "/v1/datasets",
        files={"file": ("reviews.csv", CSV)},
        data={"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great", "name": "reviews"},
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["summary"]["rows"] == 80 and dataset["summary"]["labels"] == ["neg", "pos"]
    assert api("GET", "/v1/datasets").json()["count"] == 1
    job = api.wait(api.submit(task=None, dataset_id=dataset["id"], k_shot=8)["id"])
    assert job["status"] == "succeeded" and job["task"] == "reviews"
    too_many = api("POST", "/v1/jobs", json={**FAST, "task": None, "dataset_id": dataset["id"], "k_shot": 30})
    assert too_many.status_code == 422 and _field(too_many) == "k_shot"


@pytest.mark.parametrize(
    "filename, content, form, status, field",
    [
        ("data.jsonl", '{"text": "a", "label": "pos"}\n{not json\n', {}, 422, "file"),
        ("data.jsonl", '{"text": "a"}\n', {}, 422, "file"),  # no label field
        ("data.txt", "hello", {}, 422, "file"),
        ("data.csv", CSV, {"verbalizer": "neg:bad"}, 422, "verbalizer"),  # label pos has no word
        ("data.csv", CSV, {"template": "no placeholders"}, 422, "template"),
        ("data.csv", CSV, {"label_field": "missing"}, 422, "file"),
        ("data.csv", "x" * 60_000, {}, 413, None),
    ],
)
def test_bad_uploads_are_rejected_with_the_reason(api, filename, content, form, status, field):
    data = {"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great", **form}
    response = api("POST", "/v1/datasets", files={"file": (filename, content)}, data=data)
    assert response.status_code == status, response.text
    if field is not None:
        assert _field(response) == field, response.json()
    assert api("GET", "/v1/datasets").json()["count"] == 0


def test_huge_upload_is_refused_before_parsing(api):
    response = api(
        "POST",
        "/v1/datasets",
        files={"file": ("big.csv", "x" * 200_000)},
        data={"template": "{text} {mask}", "verbalizer": "a:b"},
    )
    assert response.status_code == 413 and "NOGRAD_MAX_UPLOAD_MB" in response.json()["detail"]


def test_upload_without_template_is_422(api):
    response = api("POST", "/v1/datasets", files={"file": ("d.csv", CSV)}, data={"verbalizer": "neg:bad"})
    assert response.status_code == 422 and _field(response) == "template"


# ------------------------------------------------------------------ catalog
def test_catalog_routes(api):
    tasks = {t["name"]: t for t in api("GET", "/v1/tasks").json()}
    assert set(tasks) == {"mr", "trec", "sms", "bbc"} and tasks["trec"]["test"] == 500
    models = api("GET", "/v1/models").json()
    assert models[0]["name"] == "fake" and models[0]["workers"] == 1
    workers = api("GET", "/v1/workers").json()
    assert len(workers) == 1 and workers[0]["models"] == ["fake"] and workers[0]["heartbeat_age"] < 10
    metrics = api("GET", "/metrics", None, headers=_operator(api)).text
    assert "nograd_queue_depth" in metrics or "nograd_workers 1.0" in metrics


def test_many_jobs_at_once_all_complete_with_exact_budgets(api):
    ids = [api.submit(seed=s, budget=35)["id"] for s in range(12)]
    jobs = [api.wait(i) for i in ids]
    assert all(j["status"] == "succeeded" and j["calls"] == 35 for j in jobs)
    # a partial last generation: 35 = 3 full populations of 10 + 5
    assert json.loads(json.dumps(api("GET", f"/v1/jobs/{ids[0]}/history").json()))["data"][-1]["calls"] == 35


def test_fuzzed_job_options_never_crash_the_runner(tmp_path):
    """Submissions with arbitrary (schema-valid) options: each is rejected with 422 or runs to a terminal state
    with a message; the runner keeps serving afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    options = st.fixed_dictionaries(
        {},
        optional={
            "popsize": st.integers(2, 30),
            "optimizer": st.sampled_from(["cma", "ng:OnePlusOne", "ng:Nope", "x"]),
            "sigma0": st.floats(1e-6, 1e3),
            "alpha": st.floats(1e-6, 1e3),
            "bounds": st.floats(1e-3, 10),
            "loss": st.sampled_from(["ce", "hinge", "perf"]),
            "mode": st.sampled_from(["cat", "add"]),
            "n_tokens": st.integers(1, 256),
            "dim": st.integers(1, 64),
            "distribution": st.sampled_from(["normal", "uniform"]),
            "init": st.text(max_size=20),
            "icl_shots": st.integers(1, 32),
        },
    )
    jobs = st.fixed_dictionaries(
        {
            "method": st.sampled_from(["manual", "icl", "bbt", "bbtv2"]),
            "task": st.sampled_from(["trec", "sms"]),
            "model": st.just("fake"),
            "budget": st.integers(1, 40),
            "seed": st.integers(0, 2**31 - 1),
            "k_shot": st.integers(1, 100),
            "dev_every": st.integers(1, 100),
            "options": options,
        }
    )
    client, _ = make_api(tmp_path, auth=False)
    created = []
    with client:

        @given(job=jobs)
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def submit(job):
            response = client.post("/v1/jobs", json=job)
            assert response.status_code in (201, 422), response.text
            if response.status_code == 201:
                created.append(response.json()["id"])

        submit()
        assert created, "no generated job was valid"
        deadline = time.monotonic() + 120
        for job_id in created:
            while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, (job["config"], job["calls"])
                time.sleep(0.05)
            assert job["status"] == "succeeded" or job["error"], job
        ok = client.post("/v1/jobs", json=FAST).json()["id"]
        while client.get(f"/v1/jobs/{ok}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NOGRAD_MODELS", "fake,fake:0.1")
    monkeypatch.setenv("NOGRAD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NOGRAD_BATCH_SIZE", "4")
    settings = Settings()
    assert settings.models == ["fake", "fake:0.1"] and settings.batch_size == 4
    assert settings.db_url == f"sqlite:///{tmp_path / 'nograd.db'}"
    monkeypatch.setenv("NOGRAD_AUTH", "false")
    monkeypatch.setenv("NOGRAD_HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match="only bind to 127.0.0.1"):
        Settings()
