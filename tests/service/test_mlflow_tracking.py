"""NOGRAD_MLFLOW_URI: every finished job becomes one MLflow run (tags, params, per-generation metrics, the prompt
file as an artifact), read back here from a local file store with MLflow's own client; a tracking store that
cannot be written leaves the job succeeded; a URI that cannot work refuses to start the service."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from apiclient import Api
from test_api import FAST, make_api

from nograd.export import export_files
from nograd.service.settings import Settings
from nograd.service.tracking import MAX_PARAM_CHARS, MlflowTracker, TrackingError, job_params

mlflow = pytest.importorskip("mlflow", reason="pip install 'nograd[mlflow]'")
JOB = {**FAST, "model": "fake:0.02", "budget": 60}


@pytest.fixture(autouse=True)
def _file_store_allowed(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens file stores only when asked to


def _runs(uri: str, job_id: str, timeout: float = 30.0) -> list:
    """The runs tagged with `job_id`, once there is one (tracking runs after the job's final write)."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("nograd")
        if experiment is not None:
            try:
                runs = client.search_runs([experiment.experiment_id], f"tags.`nograd.job_id` = '{job_id}'")
            except (ValueError, mlflow.exceptions.MlflowException):  # a file store read while the tracker
                runs = []  # writes the run: an empty or half-written metric or meta file
            if runs and runs[0].info.status != "RUNNING":
                return runs
        time.sleep(0.1)
    raise TimeoutError(f"no finished MLflow run for job {job_id}")


def test_a_finished_job_is_one_mlflow_run(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    client, _ = make_api(tmp_path, mlflow_uri=uri, models=["fake:0.02"])
    with client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")})
        done = api.wait(api.submit(**JOB)["id"])
        assert done["status"] == "succeeded", done
        history = api("GET", f"/v1/jobs/{done['id']}/history").json()["data"]
        prompt = api("GET", f"/v1/jobs/{done['id']}/prompt").content
        (run,) = _runs(uri, done["id"])

    tracking = mlflow.MlflowClient(tracking_uri=uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == (done.get("name") or done["id"])
    tags = run.data.tags
    assert tags["nograd.job_id"] == done["id"] and tags["nograd.status"] == "succeeded"
    assert (tags["nograd.method"], tags["nograd.task"], tags["nograd.model"]) == ("bbt", "trec", "fake:0.02")
    assert "alice" not in tags.values() and len(tags["nograd.tenant_hash"]) == 16
    params = run.data.params
    assert params["method"] == "bbt" and params["budget"] == "60"
    assert params["dim"] == "8" and params["popsize"] == "10"

    # One point per generation, steps increasing, values as the job's history has them.
    assert len(history) > 2
    for key, values in (("calls", [e["calls"] for e in history]), ("best_loss", [e.get("best_loss") for e in history])):
        points = tracking.get_metric_history(run.info.run_id, key)
        kept = [(e["generation"], v) for e, v in zip(history, values) if v is not None]
        assert [(p.step, p.value) for p in points] == [(g, pytest.approx(v)) for g, v in kept], key
        assert [p.step for p in points] == sorted({p.step for p in points})
    dev_rounds = [e for e in history if "dev" in e]
    assert [p.value for p in tracking.get_metric_history(run.info.run_id, "dev.metric")] == pytest.approx(
        [e["dev"]["metric"] for e in dev_rounds]
    )
    final = run.data.metrics
    assert final["final.calls"] == done["calls"]
    assert final["final.dev_metric"] == pytest.approx(done["best_dev_metric"])
    assert final["final.test_metric"] == pytest.approx(done["test_metric"])

    assert {a.path for a in tracking.list_artifacts(run.info.run_id)} >= {"prompt.safetensors", "result.json"}
    saved = Path(tracking.download_artifacts(run.info.run_id, "prompt.safetensors", str(tmp_path / "dl")))
    assert saved.read_bytes() == prompt
    # the prompt ready to use: a BBT job's PEFT adapter, as `nograd export --format peft` writes it
    adapter = Path(tracking.download_artifacts(run.info.run_id, "peft", str(tmp_path / "dl")))
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == export_files(prompt, "peft")


def test_a_tracking_failure_leaves_the_job_succeeded(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder would be")
    uri = (blocker / "mlruns").as_uri()
    client, _ = make_api(tmp_path, mlflow_uri=uri, models=["fake:0.02"])
    with caplog.at_level(logging.WARNING, logger="nograd.jobs"), client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")})
        job = api.submit(**JOB)
        assert api.wait(job["id"])["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while not any("logging to MLflow failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the tracking failure was not logged"
            time.sleep(0.1)
        assert api("GET", f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    (record,) = [r for r in caplog.records if "logging to MLflow failed" in r.getMessage()]
    assert record.levelno == logging.WARNING and job["id"] in record.getMessage()


def test_params_are_cut_to_a_safe_length_and_urls_lose_credentials():
    endpoint = {"kind": "openai", "base_url": "https://u:hunter2@api.example/v1?key=sk-1", "api_key_secret": "K"}
    job = {"config": {"init": "x" * 5000, "endpoint": endpoint}}
    params = job_params(job)
    assert len(params["init"]) == MAX_PARAM_CHARS and params["init"].endswith("...")
    assert params["endpoint.base_url"] == "https://api.example/v1" and params["endpoint.api_key_secret"] == "K"
    assert not any("hunter2" in v or "sk-1" in v for v in params.values())


def test_a_tracking_uri_that_cannot_work_refuses_to_start(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    with pytest.raises(ValueError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        Settings(data_dir=tmp_path, mlflow_uri=(tmp_path / "mlruns").as_uri())
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "mlflow" else object())
    with pytest.raises(TrackingError, match=r"pip install 'nograd\[mlflow\]'"):
        MlflowTracker("http://127.0.0.1:5000")
