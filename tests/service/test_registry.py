"""The registries are the one source: the REST schema's methods, options and endpoint settings are generated from
the method registry, `RunConfig` and `EndpointConfig`; `/v1/methods` publishes the registry the dashboard reads."""

from __future__ import annotations

import dataclasses

from fastapi.testclient import TestClient

from nograd.clients.endpoint import EndpointConfig
from nograd.clients.kinds import ENDPOINT_KINDS
from nograd.config import JOB_FIELDS, JOB_OPTIONS, RunConfig
from nograd.methods import METHODS
from nograd.service.api import create_app
from nograd.service.api.schemas import EndpointSpec, JobCreate, JobOptions
from nograd.service.settings import Settings


def test_the_schema_is_generated_from_the_registries():
    schema = JobCreate.model_json_schema()
    assert schema["properties"]["method"]["enum"] == list(METHODS)
    assert set(JOB_FIELDS) <= set(schema["properties"])
    assert list(JobOptions.model_fields) == list(JOB_OPTIONS)
    assert set(JOB_FIELDS) | set(JOB_OPTIONS) <= {f.name for f in dataclasses.fields(RunConfig)}
    endpoint = EndpointSpec.model_json_schema()["properties"]
    assert endpoint["kind"]["enum"] == list(ENDPOINT_KINDS)
    assert set(endpoint) == {f.name for f in dataclasses.fields(EndpointConfig)}
    # bounds and help come from the declaring field: one decision
    popsize = JobOptions.model_json_schema()["properties"]["popsize"]
    assert popsize["anyOf"][0]["minimum"] == 2 and popsize["description"] == "candidates per generation"
    assert endpoint["concurrency"]["maximum"] == 64


def test_v1_methods_publishes_the_registry(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, models=["fake"], auth=False))
    with TestClient(app, base_url="http://127.0.0.1") as http:  # auth off serves loopback Host names only
        methods = http.get("/v1/methods").json()
    assert [m["name"] for m in methods] == list(METHODS)
    by_name = {m["name"]: m for m in methods}
    assert by_name["bbt"]["needs_embeddings"] and by_name["bbt"]["transfers"] and by_name["bbt"]["search"]
    assert not by_name["manual"]["search"] and by_name["bbpl"]["endpoint_kinds"] == ["openai", "vllm"]
    assert by_name["bbtv2"]["endpoint_kinds"] == []
    popsize = {
        m["name"]: next(o["default"] for o in m["options"] if o["name"] == "popsize") for m in methods if m["search"]
    }
    assert popsize == {"bbt": 20, "bbtv2": 10, "bbpl": 20, "rlprompt": 16, "icl_search": 20}
    assert all(o["name"] in JOB_OPTIONS for m in methods for o in m["options"])
    mode = next(o for o in by_name["bbt"]["options"] if o["name"] == "mode")
    assert mode["choices"] == ["cat", "add"] and mode["default"] == "add"
