"""Studies over the REST API (in-process app, embedded worker serving the fake model): a sweep runs every cell once
per seed, its summary's counts and mean ± std match its jobs, cancel stops them all, quotas and validation refuse
with the field and the limit, other tenants see nothing; jobs' name, tags and study_id, and their filters."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import sqlalchemy as sa
from apiclient import Api
from test_api import make_api

from nograd.service.api.sweeps import summary

BASE = {
    "task": "trec",
    "model": "fake:0.02",
    "budget": 40,
    "dev_every": 20,
    "options": {"dim": 8, "popsize": 10},
    "tags": ["sweep-1", "v0.2"],
}


@pytest.fixture
def make(tmp_path):
    """An `Api` for alice and bob on an app built with these settings (closed after the test)."""
    opened = []

    def build(**settings) -> Api:
        client, _ = make_api(tmp_path / str(len(opened)), models=["fake", "fake:0.02"], **settings)
        client.__enter__()
        opened.append(client)
        store = client.app.state.store
        return Api(client, {"alice": store.create_key("alice"), "bob": store.create_key("bob")})

    yield build
    for client in opened:
        client.__exit__(None, None, None)


def field(response) -> str:
    assert response.status_code == 422, response.text
    return ".".join(str(p) for p in response.json()["detail"][0]["loc"][1:])


def wait_done(api: Api, study_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = api("GET", f"/v1/studies/{study_id}").json()
        if study["done"]:
            return study
        time.sleep(0.1)
    raise TimeoutError(study_id)


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values), "n": len(values)}


def test_a_study_runs_each_cell_once_per_seed_and_summarizes_its_jobs(make):
    api = make()
    created = api(
        "POST", "/v1/studies", json={"name": "m2s2", "base": BASE, "sweep": {"method": ["bbt", "bbpl"], "seed": [3, 4]}}
    )
    assert created.status_code == 201, created.text
    study = created.json()
    assert (
        study["n_jobs"] == 4 and study["name"] == "m2s2" and study["counts"]["queued"] + study["counts"]["running"] == 4
    )
    assert [c["key"] for c in study["cells"]] == ["method=bbt", "method=bbpl"]
    done = wait_done(api, study["id"])
    assert done["done"] and done["counts"] == {"queued": 0, "running": 0, "succeeded": 4, "failed": 0, "cancelled": 0}
    for cell in done["cells"]:
        assert cell["seeds"] == [3, 4] and cell["n_done"] == 2 and cell["counts"]["succeeded"] == 2
        jobs = [api("GET", f"/v1/jobs/{job_id}").json() for job_id in cell["job_ids"]]
        method = cell["params"]["method"]
        assert [(j["method"], j["config"]["seed"]) for j in jobs] == [(method, 3), (method, 4)]
        assert [j["name"] for j in jobs] == [f"m2s2 method={method} seed=3", f"m2s2 method={method} seed=4"]
        assert all(j["study_id"] == study["id"] and j["tags"] == ["sweep-1", "v0.2"] for j in jobs)
        assert cell["dev_metric"] == pytest.approx(spread([j["best_dev_metric"] for j in jobs]))
        assert cell["test_metric"] == pytest.approx(spread([j["test_metric"] for j in jobs]))

    listed = api("GET", "/v1/studies").json()
    assert listed["count"] == 1 and listed["data"][0] == api("GET", f"/v1/studies/{study['id']}").json()
    # The jobs' filters: by study, by tag (whole tags only: "sweep" is not "sweep-1"), by exact name.
    other = api.submit(**{**BASE, "method": "manual", "tags": ["other"], "name": "lone"})
    jobs = lambda **q: api("GET", "/v1/jobs", params=q).json()  # noqa: E731
    assert {j["id"] for j in jobs(study_id=study["id"])["data"]} == {i for c in done["cells"] for i in c["job_ids"]}
    assert jobs(tag="sweep-1")["count"] == 4 and jobs(tag="sweep")["count"] == 0 and jobs(tag="v0_2")["count"] == 0
    assert [j["id"] for j in jobs(tag="other")["data"]] == [other["id"]]
    assert jobs(name="m2s2 method=bbpl seed=4")["count"] == 1 and jobs(name="lone")["data"][0]["id"] == other["id"]
    assert jobs(study_id=study["id"], method="bbt")["count"] == 2
    assert field(api("GET", "/v1/jobs", params={"tag": "no spaces"})) == "tag"


def test_swept_options_and_seeds_override_the_base(make):
    api = make(run_jobs=False)
    base = {**BASE, "method": "bbt", "seed": 9}
    sweep = {"options.dim": [4, 8], "budget": [20, 30, 40], "seed": [0]}
    study = api("POST", "/v1/studies", json={"base": base, "sweep": sweep}).json()
    assert [c["key"] for c in study["cells"]][:2] == ["options.dim=4, budget=20", "options.dim=4, budget=30"]
    assert study["n_jobs"] == 6 and study["base"] == base and study["sweep"] == sweep
    for cell in study["cells"]:
        (job,) = [api("GET", f"/v1/jobs/{job_id}").json() for job_id in cell["job_ids"]]
        assert job["config"]["seed"] == 0 and job["budget"] == cell["params"]["budget"]
        assert job["config"]["dim"] == cell["params"]["options.dim"] and job["config"]["popsize"] == 10
        assert job["name"] == f"study options.dim={cell['params']['options.dim']} budget={job['budget']} seed=0"
    # Seeds only: one cell, named so; the base's seed when none is swept.
    seeds = api("POST", "/v1/studies", json={"base": base, "sweep": {"seed": [1, 2]}}).json()
    assert [(c["key"], c["params"], c["seeds"]) for c in seeds["cells"]] == [("(base)", {}, [1, 2])]
    budgets = api("POST", "/v1/studies", json={"base": base, "sweep": {"budget": [20, 30]}}).json()
    assert [c["seeds"] for c in budgets["cells"]] == [[9], [9]]
    page = api("GET", "/v1/studies", params={"limit": 1, "offset": 1}).json()  # newest first
    assert page["count"] == 3 and [s["id"] for s in page["data"]] == [seeds["id"]]


def test_cancel_stops_every_job_that_has_not_ended(make):
    api = make(run_jobs=False)  # all stay queued: cancelled at once
    study = api("POST", "/v1/studies", json={"base": {**BASE, "method": "bbt"}, "sweep": {"seed": [0, 1, 2]}}).json()
    first, *rest = study["cells"][0]["job_ids"]
    assert api("POST", f"/v1/jobs/{first}/cancel").json()["status"] == "cancelled"
    cancelled = api("POST", f"/v1/studies/{study['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["done"]
    assert cancelled.json()["counts"]["cancelled"] == 3 and cancelled.json()["cells"][0]["n_done"] == 3
    assert all(api("GET", f"/v1/jobs/{job_id}").json()["status"] == "cancelled" for job_id in rest)
    assert api("POST", f"/v1/studies/{study['id']}/cancel").json() == cancelled.json()  # nothing left: the same


def test_cancel_stops_running_jobs_too(make):
    api = make(tenant_running_jobs=2)
    body = {"base": {**BASE, "method": "bbt", "budget": 100_000}, "sweep": {"seed": [0, 1, 2, 3]}}
    study = api("POST", "/v1/studies", json=body).json()
    deadline = time.monotonic() + 30
    while api("GET", f"/v1/studies/{study['id']}").json()["counts"]["running"] < 2:
        assert time.monotonic() < deadline, "no job started"
        time.sleep(0.05)
    api("POST", f"/v1/studies/{study['id']}/cancel")
    assert wait_done(api, study["id"], timeout=30)["counts"]["cancelled"] == 4


def test_a_study_must_fit_the_quotas_as_a_whole(make):
    api = make(run_jobs=False, tenant_queued_jobs=5, max_study_jobs=4)
    body = {"base": {**BASE, "method": "bbt"}, "sweep": {"seed": [0, 1], "budget": [20, 30, 40]}}
    too_big = api("POST", "/v1/studies", json=body)
    assert field(too_big) == "sweep"
    assert "6 jobs (2 seed x 3 budget)" in too_big.text and "at most 4" in too_big.text
    assert "NOGRAD_MAX_STUDY_JOBS=4" in too_big.text
    api.submit(**{**BASE, "method": "manual"})
    api.submit(**{**BASE, "method": "manual"})
    body["sweep"] = {"seed": [0, 1], "budget": [20, 30]}  # 4 fits one study, not 2 queued + 4
    refused = api("POST", "/v1/studies", json=body)
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert (
        "these 4 would make 6" in refused.json()["detail"] and "NOGRAD_TENANT_QUEUED_JOBS" in refused.json()["detail"]
    )
    assert api("GET", "/v1/jobs").json()["count"] == 2 and api("GET", "/v1/studies").json()["count"] == 0
    api.submit("bob", **{**BASE, "method": "manual"})  # another tenant's queue counts for it alone
    body["sweep"] = {"seed": [0, 1, 2]}
    assert api("POST", "/v1/studies", json=body).status_code == 201


def test_the_largest_study_is_the_smaller_limit(make):
    api = make(run_jobs=False, tenant_queued_jobs=3)  # max_study_jobs stays 100
    refused = api("POST", "/v1/studies", json={"base": {**BASE, "method": "bbt"}, "sweep": {"seed": [0, 1, 2, 3]}})
    assert field(refused) == "sweep" and "at most 3" in refused.text


@pytest.mark.parametrize(
    "base, sweep, where, words",
    [
        ({"method": "bbt"}, {"colour": [1]}, "sweep.colour", "options.dim"),  # unknown key: the valid ones listed
        ({"method": "bbt"}, {"name": ["a"]}, "sweep.name", "cannot be swept"),  # the study names its jobs
        ({"method": "bbt"}, {"budget": []}, "sweep.budget", "at least 1"),
        ({"method": "bbt"}, {}, "sweep", "at least 1"),
        ({}, {"method": ["bbt", "bbpl", "bbt"]}, "sweep.method[2]", "repeats sweep.method[0]"),
        ({}, {"method": ["bbt", "sgd"]}, "sweep.method[1]", "'bbpl'"),
        ({"method": "bbt"}, {"options.dim": [8, 1]}, "sweep.options.dim[1]", "greater than or equal to 2"),
        ({"method": "bbt"}, {"seed": [0, -1]}, "sweep.seed[1]", "greater than or equal to 0"),
        ({"method": "bbt"}, {"task": ["trec", "nope"]}, "sweep.task[1]", "unknown task"),
        ({"method": "bbt"}, {"model": ["fake", "gpt-9"]}, "sweep.model[1]", "GET /v1/models"),
        ({"method": "bbt", "budget": -1}, {"seed": [0]}, "base.budget", "greater than"),
        ({"method": "bbt", "colour": 1}, {"seed": [0]}, "base.colour", "not permitted"),
        ({"method": "bbt", "tags": ["a b"]}, {"seed": [0]}, "base.tags.0", "pattern"),
        ({"method": "bbt", "options": {"dim": 1}}, {"seed": [0]}, "base.options.dim", "greater than"),
        ({}, {"seed": [0]}, "base.method", "required"),
        ({"method": "bbt"}, {"budget": [float("inf")]}, "sweep", "finite"),
    ],
)
def test_invalid_studies_name_the_value_and_create_nothing(make, base, sweep, where, words):
    api = make(run_jobs=False)
    body = {"base": {k: v for k, v in BASE.items() if k != "tags"} | base, "sweep": sweep}
    if any(v == [float("inf")] for v in sweep.values()):  # JSON has no Infinity: send it as Python's json writes it
        response = api("POST", "/v1/studies", content=json.dumps(body), headers={"Content-Type": "application/json"})
    else:
        response = api("POST", "/v1/studies", json=body)
    assert field(response) == where and words in response.text, response.text
    assert api("GET", "/v1/jobs").json()["count"] == 0 and api("GET", "/v1/studies").json()["count"] == 0


def test_another_tenants_study_is_not_found(make):
    api = make(run_jobs=False)
    study = api("POST", "/v1/studies", json={"base": {**BASE, "method": "bbt"}, "sweep": {"seed": [0, 1]}}).json()
    for method, path in (("GET", f"/v1/studies/{study['id']}"), ("POST", f"/v1/studies/{study['id']}/cancel")):
        response = api(method, path, "bob")
        assert response.status_code == 404 and study["id"] in response.json()["detail"]
    assert api("GET", "/v1/studies", "bob").json() == {"data": [], "count": 0}
    assert api("GET", "/v1/jobs", "bob", params={"study_id": study["id"]}).json()["count"] == 0
    assert api("GET", f"/v1/studies/{study['id']}").json()["counts"]["queued"] == 2  # bob's cancel changed nothing
    assert api("GET", "/v1/studies/study_missing").status_code == 404


def test_a_jobs_name_and_tags_are_bounded(make):
    api = make(run_jobs=False)
    job = api.submit(**{**BASE, "method": "bbt", "name": "baseline run", "tags": ["a", "b:c"]})
    assert (job["name"], job["tags"], job["study_id"]) == ("baseline run", ["a", "b:c"], None)
    assert api.submit(**{**BASE, "method": "bbt", "tags": []})["name"] is None
    for change, where in (
        ({"tags": [f"t{i}" for i in range(21)]}, "tags"),
        ({"tags": ["x" * 65]}, "tags.0"),
        ({"tags": [""]}, "tags.0"),
        ({"name": "n" * 201}, "name"),
        ({"name": ""}, "name"),
        ({"study_id": "study_x"}, "study_id"),  # set only by studies
    ):
        assert field(api("POST", "/v1/jobs", json={**BASE, "method": "bbt", **change})) == where


def test_summary_statistics_count_succeeded_jobs_only():
    layout = [
        {"key": "method=bbt", "params": {"method": "bbt"}, "seeds": [0, 1, 2, 3], "job_ids": ["a", "b", "c", "d"]}
    ]
    study = {"id": "s", "name": None, "created_at": 1.0, "base": {}, "sweep": {}, "n_jobs": 4, "layout": layout}
    jobs = [
        {"id": "a", "status": "succeeded", "best_dev_metric": 0.5, "test_metric": 0.4},
        {"id": "b", "status": "succeeded", "best_dev_metric": 0.7, "test_metric": None},  # no test split
        {"id": "c", "status": "failed", "best_dev_metric": 0.9, "test_metric": 0.9},
        {"id": "d", "status": "running", "best_dev_metric": 0.8, "test_metric": None},
    ]
    (cell,) = summary(study, jobs)["cells"]
    assert cell["dev_metric"] == pytest.approx({"mean": 0.6, "std": statistics.stdev([0.5, 0.7]), "n": 2})
    assert cell["test_metric"] == {"mean": 0.4, "std": None, "n": 1}
    assert cell["n_done"] == 3 and cell["counts"] == {
        "queued": 0,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
        "cancelled": 0,
    }
    assert not summary(study, jobs)["done"]
    assert summary(study, jobs[:1])["cells"][0]["dev_metric"] == {"mean": 0.5, "std": None, "n": 1}


def _job(**change) -> dict:
    return dict(method="manual", task="mr", dataset_id=None, model="fake", config={}, budget=0) | change


def test_the_store_creates_a_study_with_all_its_jobs_or_none(store):
    cells = [
        {"key": "method=manual", "params": {"method": "manual"}, "seeds": [0, 1], "jobs": [_job(), _job(name="b")]},
        {"key": "method=icl", "params": {"method": "icl"}, "seeds": [0, 1], "jobs": [_job(), _job(method=None)]},
    ]
    with pytest.raises(sa.exc.IntegrityError):  # the last job cannot be stored: neither can the rest
        store.create_study(tenant="t", name="s", base={}, sweep={}, cells=cells)
    assert store.list_studies("t")[1] == 0 and store.list_jobs("t")[1] == 0
    cells[1]["jobs"][1] = _job(method="icl", tags=["x"])
    study, jobs = store.create_study(
        tenant="t", name="s", base={"a": 1}, sweep={"method": ["manual", "icl"]}, cells=cells
    )
    assert [len(c["job_ids"]) for c in study["layout"]] == [2, 2] and study["n_jobs"] == 4
    assert {i for c in study["layout"] for i in c["job_ids"]} == {j["id"] for j in jobs}
    named = store.get_job(study["layout"][0]["job_ids"][1])  # a cell's jobs in its seeds' order
    assert named["name"] == "b" and named["tenant"] == "t" and named["status"] == "queued"
    assert {j["study_id"] for j in jobs} == {study["id"]} and store.list_jobs("t", study_id=study["id"])[1] == 4
    assert store.list_jobs("t", tag="x")[1] == 1 and store.list_jobs("t", name="b")[1] == 1
    assert store.get_study(study["id"], "other") is None and store.list_studies("other") == ([], 0)
    store.request_cancel(jobs[0]["id"], "t")
    assert store.cancel_study(study["id"], "other") is None
    assert store.cancel_study(study["id"], "t") == 3 and store.cancel_study(study["id"], "t") == 0
    assert {j["status"] for j in store.study_jobs([study["id"]])} == {"cancelled"}
