"""An uploaded dataset has a held-out test split (the same automatic rule as `nograd run --dataset`, a fraction
chosen at upload, or an uploaded test file), and jobs on it report a test metric equal to what `nograd run` prints on
the same file with the same options (in-process API; embedded queue and worker serving the fake model)."""

from __future__ import annotations

import json

import pytest
from apiclient import Api
from fastapi.testclient import TestClient

from nograd.cli import main
from nograd.service.api import create_app
from nograd.service.settings import Settings
from nograd.tasks import examples_hash, load_user_dataset

JOB = {
    "method": "bbt",
    "model": "fake",
    "budget": 40,
    "dev_every": 20,
    "task": None,
    "options": {"dim": 8, "popsize": 10},
}
FORM = {"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great"}


def reviews(per_label: int, start: int = 0) -> str:
    """A CSV of `per_label` rows of each label."""
    rows = "".join(f"great movie number {i},pos\nawful film number {i},neg\n" for i in range(start, start + per_label))
    return "text,label\n" + rows


@pytest.fixture
def api(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=True, lease_seconds=2.0, max_upload_mb=0.05)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        client.app.state.events_poll = 0.05
        yield Api(client, {"alice": client.app.state.store.create_key("alice")}, JOB)


def upload(api: Api, content: str, test: str | None = None, **form) -> dict:
    files = {"file": ("reviews.csv", content), **({} if test is None else {"test_file": ("held.csv", test)})}
    response = api("POST", "/v1/datasets", files=files, data={**FORM, **form})
    assert response.status_code == 201, response.text
    return response.json()


def refused(api: Api, content: str, test: str | None = None, **form) -> tuple[str, str]:
    files = {"file": ("reviews.csv", content), **({} if test is None else {"test_file": ("held.csv", test)})}
    response = api("POST", "/v1/datasets", files=files, data={**FORM, **form})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    return ".".join(map(str, detail["loc"][1:])), detail["msg"]


def cli_result(tmp_path, *extra: str) -> dict:
    """`nograd run` on the same file with the job's options (JOB): its result.json."""
    out = tmp_path / "run"
    args = ["run", "--dataset", str(tmp_path / "reviews.csv"), "--template", FORM["template"]]
    args += ["--verbalizer", FORM["verbalizer"], "--model", "fake", "--method", "bbt", "--budget", "40"]
    args += ["--dev-every", "20", "--dim", "8", "--popsize", "10", "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())


def test_an_upload_with_default_options_gets_a_test_split_and_jobs_report_a_test_metric(api, tmp_path):
    dataset = upload(api, reviews(40))
    summary = dataset["summary"]
    assert summary["rows"] == 80 and summary["test"] == 16 and summary["pool"] == 64
    assert summary["test_per_label"] == {"neg": 8, "pos": 8} and summary["test_fraction"] == 0.2
    assert "held out 16 of 80 rows" in summary["notes"][0]
    assert dataset["options"]["test_fraction"] == 0.2  # decided at upload: every job tests on these rows
    job = api.wait(api.submit(dataset_id=dataset["id"])["id"])  # no k_shot: 16 fits the 32 rows per label left
    assert job["status"] == "succeeded", job
    assert job["test_metric"] is not None and job["config"]["k_shot"] == 16
    # The same file and options on the CLI: the same split, the same numbers.
    (tmp_path / "reviews.csv").write_text(reviews(40))
    local = cli_result(tmp_path)
    assert local["test_metric"] == job["test_metric"] and local["dev_metric"] == job["result"]["dev_metric"]
    assert local["data_hashes"] == job["result"]["data_hashes"]


def test_a_test_fraction_at_upload_is_used_by_jobs_and_matches_the_cli(api, tmp_path):
    dataset = upload(api, reviews(40), test_fraction="0.25")
    assert dataset["summary"]["test"] == 20 and dataset["options"]["test_fraction"] == 0.25
    job = api.wait(api.submit(dataset_id=dataset["id"], k_shot=8, seed=3)["id"])
    assert job["status"] == "succeeded" and job["test_metric"] is not None
    (tmp_path / "reviews.csv").write_text(reviews(40))
    local = cli_result(tmp_path, "--test-fraction", "0.25", "--k-shot", "8", "--seed", "3")
    assert local["test_metric"] == job["test_metric"] and local["data_hashes"] == job["result"]["data_hashes"]


def test_an_uploaded_test_file_is_the_test_set(api, tmp_path):
    held = reviews(6, start=100)
    dataset = upload(api, reviews(40), test=held)
    assert dataset["test_filename"] == "held.csv"
    summary = dataset["summary"]
    assert summary["pool"] == 80 and summary["test"] == 12 and summary["test_fraction"] == 0.0
    assert "test_fraction" not in dataset["options"]
    assert api.store.dataset_bytes("alice") == len(reviews(40)) + len(held)  # the quota counts both files
    job = api.wait(api.submit(dataset_id=dataset["id"])["id"])
    assert job["status"] == "succeeded" and job["test_metric"] is not None
    assert job["config"]["test_dataset"] is None and job["config"]["dataset"] is None  # no replica's paths stored
    (tmp_path / "held.csv").write_text(held)
    expected = load_user_dataset(tmp_path / "held.csv", template=FORM["template"], verbalizer=FORM["verbalizer"])
    assert job["result"]["data_hashes"]["test"] == examples_hash(list(expected.pool + expected.test))
    (tmp_path / "reviews.csv").write_text(reviews(40))
    local = cli_result(tmp_path, "--test-dataset", str(tmp_path / "held.csv"))
    assert local["test_metric"] == job["test_metric"] and local["data_hashes"] == job["result"]["data_hashes"]
    # Deleting the dataset removes this replica's copies of both files.
    copies = tmp_path / "data" / "datasets"
    assert len(list(copies.glob(f"{dataset['id']}-*"))) == 2
    assert api("DELETE", f"/v1/datasets/{dataset['id']}").status_code == 204
    assert list(copies.glob(f"{dataset['id']}-*")) == []


def test_test_fraction_0_at_upload_means_no_test_set(api):
    dataset = upload(api, reviews(40), test_fraction="0")
    assert dataset["summary"]["test"] == 0 and dataset["summary"]["notes"] == []
    job = api.wait(api.submit(dataset_id=dataset["id"])["id"])
    assert job["status"] == "succeeded" and job["test_metric"] is None


def test_a_small_upload_gets_k_shot_lowered_with_a_note_or_a_422_naming_the_largest(api):
    dataset = upload(api, reviews(20))  # 4 rows per label held out, 16 left: k_shot 8
    assert dataset["summary"]["test"] == 8
    job = api.submit(dataset_id=dataset["id"])
    assert job["config"]["k_shot"] == 8
    assert any("k_shot lowered from 16 to 8" in note for note in job["config"]["notes"])
    assert api.wait(job["id"])["test_metric"] is not None
    response = api("POST", "/v1/jobs", json={**JOB, "dataset_id": dataset["id"], "k_shot": 16})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][1:] == ["k_shot"] and "largest k_shot that fits is 8" in detail["msg"]


def test_bad_split_options_are_422_naming_the_field(api):
    field, message = refused(api, reviews(40), test=reviews(3), test_fraction="0.2")
    assert field == "test_fraction" and "not both" in message
    field, message = refused(api, reviews(10), test_fraction="0.95")
    assert field == "test_fraction" and "largest test_fraction that fits is 0.89" in message
    field, message = refused(api, reviews(10), test="text,label\nso so,meh\n")
    assert field == "test_file" and "held.csv" in message and "'meh'" in message
    field, _ = refused(api, reviews(10), test_fraction="1.5")
    assert field == "test_fraction"
    assert api("GET", "/v1/datasets").json()["count"] == 0
