"""The service's command line against a real `nograd serve` (embedded queue and worker, fake model, auth on):
keys create, submit --watch, status, jobs, watch; errors are one line naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from procs import ROOT, free_port, serve


def nograd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "nograd.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli") / "data"
    key = nograd("keys", "create", "--tenant", "cli", "--data-dir", str(data)).stdout.strip()
    port = free_port()
    proc = serve(data, None, port, models="fake")
    yield {"NOGRAD_URL": f"http://127.0.0.1:{port}", "NOGRAD_API_KEY": key}
    proc.terminate()


def test_keys_create_prints_one_key(tmp_path):
    result = nograd("keys", "create", "--tenant", "t", "--data-dir", str(tmp_path))
    assert result.returncode == 0 and result.stdout.startswith("ng_") and len(result.stdout.split()) == 1
    assert "shown only this once" in result.stderr


def test_submit_watch_status_jobs(service):
    submitted = nograd(
        "submit",
        "--method",
        "bbt",
        "--task",
        "trec",
        "--model",
        "fake",
        "--budget",
        "40",
        "--dev-every",
        "20",
        "--option",
        "popsize=10",
        "--option",
        "dim=8",
        "--watch",
        env=service,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]
    summary = json.loads("\n".join(submitted.stdout.splitlines()[1:]))
    assert summary["status"] == "succeeded" and summary["calls"] == 40
    assert "40/40" in submitted.stderr  # the progress bar reached the budget
    status = nograd("status", job_id, env=service)
    assert json.loads(status.stdout)["id"] == job_id
    listed = nograd("jobs", "--method", "bbt", env=service)
    assert job_id in listed.stdout and "succeeded" in listed.stdout
    watched = nograd("watch", job_id, env=service)  # a finished job: the stream ends at once
    assert watched.returncode == 0 and json.loads(watched.stdout)["status"] == "succeeded"


def test_errors_are_one_line(service):
    bad = nograd("submit", "--method", "bbt", "--task", "nope", "--model", "fake", env=service)
    assert bad.returncode == 2 and "task: unknown task 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    missing = nograd("status", "job_missing", env=service)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
    no_key = nograd("jobs", env={**service, "NOGRAD_API_KEY": ""})
    assert no_key.returncode == 2 and "HTTP 401" in no_key.stderr
    option = nograd("submit", "--method", "bbt", "--task", "trec", "--option", "popsize", env=service)
    assert option.returncode == 2 and "KEY=VALUE" in option.stderr


def test_secret_from_stdin_and_a_remote_endpoint_job(service):
    stored = subprocess.run(
        [sys.executable, "-m", "nograd.cli", "secret", "remote"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input="sk-from-stdin\n",
        env={**__import__("os").environ, **service},
        timeout=60,
    )
    assert stored.returncode == 0 and stored.stdout.strip() == "stored remote" and "sk-from" not in stored.stdout
    # The service denies loopback hosts by default: a clear one-line 422 on endpoint.base_url.
    endpoint = json.dumps(
        {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_secret": "remote"}
    )
    bad = nograd("submit", "--method", "bbpl", "--task", "mr", "--endpoint", endpoint, env=service)
    assert bad.returncode == 2 and "endpoint.base_url" in bad.stderr and "NOGRAD_REMOTE_ALLOW" in bad.stderr


def test_a_bad_setting_names_the_field_and_its_variable(tmp_path, monkeypatch, capsys):
    from nograd.cli import main

    monkeypatch.setenv("NOGRAD_LOG_FORMAT", "xml")
    assert main(["serve", "--data-dir", str(tmp_path), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "log_format (NOGRAD_LOG_FORMAT): Input should be 'text' or 'json'" in err and len(err.splitlines()) == 1
