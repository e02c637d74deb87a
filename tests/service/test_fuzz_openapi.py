"""Property-based fuzzing of the OpenAPI schema (schemathesis strategies driven by hypothesis) against a real
`nograd serve` process: whatever the generated request, with or without a key, the API never answers 5xx, and
its JSON answers match the schema. (schemathesis' own pytest plugin does not load with this pytest, so the
operations' strategies are used directly.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from procs import create_key, free_port, serve
from schemathesis.checks import not_a_server_error, response_schema_conformance

from nograd.service.api import create_app
from nograd.service.settings import Settings

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(data_dir=Path("/nonexistent"))).openapi())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    key = create_key(data, "fuzz")
    port = free_port()
    proc = serve(data, None, port, "--max-concurrent-jobs", "2", models="fake")
    yield f"http://127.0.0.1:{port}", key, proc
    proc.terminate()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_errors(server, label):
    url, key, proc = server

    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        case.call_and_validate(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"},
            checks=[not_a_server_error, response_schema_conformance],
        )

    check()
    assert proc.proc.poll() is None  # the server is still up


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_errors_without_a_key(server, label):
    url, _, _ = server

    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        case.call_and_validate(base_url=url, checks=[not_a_server_error])

    check()
