"""The API answers while the embedded worker loads its model (the built-in model's first load converts a GGUF file,
~20 s): jobs wait in phase `loading`, `/readyz` says how loading goes, and a model that cannot load is a 503 there
(and an ERROR in the log), never a server that does not start."""

from __future__ import annotations

import threading
import time

from apiclient import Api
from test_api import make_api

from nograd.engine.fake import FakeEngine
from nograd.service.api import app as app_module

JOB = {"method": "bbt", "task": "trec", "model": "fake", "budget": 20, "options": {"dim": 8, "popsize": 10}}


def test_jobs_wait_for_a_model_that_is_still_loading(tmp_path, monkeypatch):
    release = threading.Event()

    def slow_build(name, **_):
        release.wait(30)
        return FakeEngine(model_id=name)

    monkeypatch.setattr(app_module, "build_engine", slow_build)
    client, _ = make_api(tmp_path)
    with client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")}, JOB)
        ready = client.get("/readyz").json()
        assert ready["embedded_worker"] == {"status": "loading", "models": ["fake"]} and ready["status"] == "ok"
        job = api.submit()
        deadline = time.monotonic() + 10
        # claimed (running, phase loading), then its runner says what it waits for
        while (job := api("GET", f"/v1/jobs/{job['id']}").json())["phase"][
            "label"
        ] != "waiting for a worker serving fake":
            assert job["status"] in ("queued", "running") and job["phase"]["name"] in ("queued", "loading"), job
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["status"] == "running" and job["phase"]["name"] == "loading"
        release.set()
        assert api.wait(job["id"])["status"] == "succeeded"
        assert client.get("/readyz").json()["embedded_worker"]["status"] == "ready"


def test_a_model_that_cannot_load_is_a_503_on_readyz_and_an_error_in_the_log(tmp_path, monkeypatch, caplog):
    def broken(name, **_):
        raise RuntimeError(f"cannot load model {name!r}: no such file /secret/path")

    monkeypatch.setattr(app_module, "build_engine", broken)
    client, _ = make_api(tmp_path)
    with caplog.at_level("ERROR", logger="nograd"), client:
        deadline = time.monotonic() + 10
        while (response := client.get("/readyz")).json()["embedded_worker"]["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert response.status_code == 503 and response.json()["embedded_worker"]["status"] == "failed"
        assert "/secret/path" not in response.text  # no key needed there: the reason is in the log only
        assert client.get("/livez").status_code == 200
    assert any("could not load fake" in r.getMessage() for r in caplog.records)


def test_a_stop_while_loading_returns_at_once(tmp_path, monkeypatch):
    never = threading.Event()
    monkeypatch.setattr(app_module, "build_engine", lambda name, **_: never.wait(60))
    client, _ = make_api(tmp_path)
    with client:
        time.sleep(0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the lifespan's exit did not wait for the 60 s load
