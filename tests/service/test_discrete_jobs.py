"""Discrete methods and remote endpoints through the REST API: bbpl / icl_search jobs on the fake model, a bbpl job
on a fake OpenAI-compatible server with a tenant secret, 422s for what an endpoint cannot serve, the allowlist,
secret hygiene and tenancy."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))
from fake_openai import FakeOpenAI  # noqa: E402
from test_api import FAST, Api, _field, make_api  # noqa: E402

from nograd.artifacts import read_prompt  # noqa: E402

KEY = "sk-live-abcdef-0123456789-do-not-leak"
BBPL = {
    "method": "bbpl",
    "task": "mr",
    "model": "fake",
    "budget": 40,
    "dev_every": 20,
    "k_shot": 8,
    "options": {"popsize": 10, "prompt_length": 4, "vocab_size": 50, "ngram_min_count": 2},
}


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def api(tmp_path, server):
    client, _ = make_api(tmp_path, remote_allow=["127.0.0.1"])
    with client:
        store = client.app.state.store
        yield Api(client, {"alice": store.create_key("alice"), "bob": store.create_key("bob")}, FAST)


@pytest.mark.parametrize(
    "method, options", [("bbpl", BBPL["options"]), ("icl_search", {"popsize": 10, "icl_shots": 1})]
)
def test_discrete_job_on_the_fake_model(api, method, options):
    job = api.wait(api.submit(**{**BBPL, "method": method, "options": options})["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["calls"] == 40 and job["result"]["prompt_text"]
    history = api("GET", f"/v1/jobs/{job['id']}/history").json()["data"]
    assert [h["calls"] for h in history][-1] == 40 and all("losses" in h for h in history[1:])
    saved = read_prompt(api("GET", f"/v1/jobs/{job['id']}/prompt").content)
    assert saved["text"] == job["result"]["prompt_text"] and saved["spec"].mode in ("text", "demos")


def _endpoint(server, **kw) -> dict:
    return {
        "kind": "openai",
        "base_url": server.url,
        "model": "fake-remote",
        "api_key_secret": "openai",
        "concurrency": 8,
        **kw,
    }


def test_bbpl_job_on_a_remote_endpoint_with_a_tenant_secret(api, server, caplog):
    caplog.set_level(logging.DEBUG)
    response = api("POST", "/v1/secrets", json={"name": "openai", "value": KEY})
    assert response.status_code == 201 and KEY not in response.text
    listed = api("GET", "/v1/secrets").json()
    assert [s["name"] for s in listed["data"]] == ["openai"] and KEY not in str(listed)
    job = api.submit(**{**BBPL, "budget": 20, "dev_every": 10, "k_shot": 4, "endpoint": _endpoint(server)})
    assert job["model"] == "openai:fake-remote" and KEY not in str(job)
    job = api.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    usage = job["result"]["usage"]
    assert usage["requests"] > 0 and usage["prompt_tokens"] > 0 and usage["missing_label_words"] == 0
    assert job["result"]["model_id"].startswith("openai:fake-remote@")
    assert all(h["authorization"] == f"Bearer {KEY}" for h in server.headers)
    history = api("GET", f"/v1/jobs/{job['id']}/history").json()["data"]
    assert history[-1]["usage"]["requests"] <= usage["requests"]
    assert KEY not in caplog.text and KEY not in str(history)
    # Another tenant cannot use alice's secret by name.
    response = api("POST", "/v1/jobs", "bob", json={**BBPL, "endpoint": _endpoint(server)})
    assert response.status_code == 422 and _field(response) == "endpoint.api_key_secret"


def test_a_method_the_endpoint_cannot_serve_is_422(api, server):
    api("POST", "/v1/secrets", json={"name": "openai", "value": KEY})
    for method in ("bbt", "bbtv2"):
        response = api(
            "POST", "/v1/jobs", json={**BBPL, "method": method, "options": {}, "endpoint": _endpoint(server)}
        )
        assert response.status_code == 422, response.text
        assert _field(response) == "method" and "bbpl" in response.text  # names what the endpoint can run


def test_remote_hosts_outside_the_allowlist_are_422(tmp_path, server):
    client, _ = make_api(tmp_path)  # default: loopback and private ranges denied
    with client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")}, FAST)
        response = api("POST", "/v1/jobs", json={**BBPL, "endpoint": _endpoint(server, api_key_secret=None)})
        assert response.status_code == 422 and _field(response) == "endpoint.base_url"
        assert "NOGRAD_REMOTE_ALLOW" in response.text


def test_secret_routes_validate_and_delete(api):
    assert api("POST", "/v1/secrets", json={"name": "bad name!", "value": "x"}).status_code == 422
    assert api("POST", "/v1/secrets", json={"name": "k", "value": KEY, "extra": 1}).status_code == 422
    assert api("POST", "/v1/secrets", json={"name": "k", "value": KEY}).status_code == 201
    assert api("GET", "/v1/secrets", "bob").json()["count"] == 0
    assert api("DELETE", "/v1/secrets/k", "bob").status_code == 404
    assert api("DELETE", "/v1/secrets/k").status_code == 204
    assert api("GET", "/v1/secrets").json()["count"] == 0
    stored = api.client.app.state.store
    assert stored.secret("alice", "k") is None


def test_secrets_are_encrypted_at_rest(api):
    api("POST", "/v1/secrets", json={"name": "openai", "value": KEY})
    token = api.client.app.state.store.secret("alice", "openai")
    assert KEY.encode() not in token
    assert api.client.app.state.secret_box.open(token) == KEY
