"""The OpenAPI document as client generators read it: every operationId is its route function's name, unique and
snake_case; the request bodies' examples are ones the routes accept (posted to the app, not only validated)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nograd.service.api import create_app
from nograd.service.api.schemas import JobCreate
from nograd.service.settings import Settings


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_operation_ids_are_unique_snake_case_route_names():
    schema = create_app(Settings(data_dir=Path("/nonexistent"))).openapi()
    ids = [op["operationId"] for _, _, op in _operations(schema)]
    assert [name for name, n in Counter(ids).items() if n > 1] == []
    assert [name for name in ids if not re.fullmatch(r"[a-z][a-z0-9_]*", name)] == []
    by_route = {(method, path): op["operationId"] for method, path, op in _operations(schema)}
    assert by_route[("post", "/v1/jobs")] == "create_job"
    assert by_route[("get", "/v1/jobs")] == "list_jobs" and by_route[("get", "/v1/jobs/{job_id}")] == "get_job"
    assert "Body_upload_dataset" in schema["components"]["schemas"]  # body schemas are named after them too


@pytest.fixture
def app_client(tmp_path):
    """The app with the default model configured (nothing runs: no worker, no model loaded), auth off."""
    model = JobCreate.model_fields["model"].default
    settings = Settings(data_dir=tmp_path / "data", models=[model], run_jobs=False, auth=False)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


def test_the_request_body_examples_are_accepted(app_client):
    components = app_client.get("/openapi.json").json()["components"]["schemas"]
    (job,) = components["JobCreate"]["examples"]
    assert job["method"] == "bbt" and job["task"] == "mr" and job["budget"] == 200
    created = app_client.post("/v1/jobs", json=job)
    assert created.status_code == 201, created.text
    assert (created.json()["method"], created.json()["budget"]) == ("bbt", 200)
    (study,) = components["StudyCreate"]["examples"]
    created = app_client.post("/v1/studies", json=study)
    assert created.status_code == 201, created.text
    assert created.json()["n_jobs"] == len(study["sweep"]["method"]) * len(study["sweep"]["seed"])


def test_the_upload_forms_examples_are_accepted(app_client):
    form = app_client.get("/openapi.json").json()["components"]["schemas"]["Body_upload_dataset"]["properties"]
    data = {field: form[field]["examples"][0] for field in ("template", "verbalizer")}
    rows = "".join(f"great movie number {i},pos\nawful film number {i},neg\n" for i in range(40))
    uploaded = app_client.post("/v1/datasets", data=data, files={"file": ("reviews.csv", "text,label\n" + rows)})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["options"]["template"] == data["template"]
