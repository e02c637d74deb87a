"""`nograd study submit | show | list | cancel` against a real `nograd serve` (embedded queue and worker, fake
models, auth on): the id printed, --watch until every job ended then the cells' table with mean ± std matching the
jobs', --json, cancel, and refusals as one line naming the field."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import httpx
import pytest
from procs import ROOT, create_key, free_port, serve

BASE = {"task": "trec", "model": "fake", "budget": 40, "dev_every": 20, "options": {"popsize": 10, "dim": 8}}


def nograd(*args: str, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nograd.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("study") / "data"
    key = create_key(data, "cli")
    port = free_port()
    proc = serve(data, None, port, models="fake,fake:0.2")
    yield {"NOGRAD_URL": f"http://127.0.0.1:{port}", "NOGRAD_API_KEY": key}
    proc.terminate()


def get(service: dict, path: str) -> dict:
    headers = {"Authorization": f"Bearer {service['NOGRAD_API_KEY']}"}
    return httpx.get(f"{service['NOGRAD_URL']}{path}", headers=headers, timeout=10).json()


def write(tmp_path, study: dict) -> str:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    return str(path)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nograd: error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_submit_watch_show_and_list(service, tmp_path):
    study = {"name": "two-methods", "base": BASE, "sweep": {"method": ["bbt", "bbpl"], "seed": [0, 1]}}
    watched = nograd("study", "submit", write(tmp_path, study), "--watch", env=service)
    assert watched.returncode == 0, watched.stderr
    study_id, header, *rows = watched.stdout.splitlines()
    assert study_id.startswith("study_") and header.split() == ["cell", "done", "dev", "test"]
    assert "4 jobs in 2 cells" in watched.stderr and "4/4" in watched.stderr  # the status line reached the end
    summary = get(service, f"/v1/studies/{study_id}")
    assert summary["done"] and summary["counts"]["succeeded"] == 4
    for cell, row in zip(summary["cells"], rows, strict=True):
        jobs = [get(service, f"/v1/jobs/{job_id}") for job_id in cell["job_ids"]]
        dev = [j["best_dev_metric"] for j in jobs]
        test = [j["test_metric"] for j in jobs]
        expected = (
            f"{statistics.fmean(dev):.3f} ± {statistics.stdev(dev):.3f}",
            f"{statistics.fmean(test):.3f} ± {statistics.stdev(test):.3f}",
        )
        assert row.startswith(cell["key"]) and " 2/2 " in row and row.endswith("  ".join(expected)), row

    shown = nograd("study", "show", study_id, env=service)
    assert shown.returncode == 0 and shown.stdout.splitlines() == [header, *rows]
    assert json.loads(nograd("study", "show", study_id, "--json", env=service).stdout) == summary
    listed = nograd("study", "list", env=service)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(study_id))
    assert line.split()[1:6] == ["two-methods", "4/4", "4", "0", "0"]
    assert json.loads(nograd("study", "list", "--json", env=service).stdout)["count"] >= 1


def test_cancel_ends_a_watched_study_that_then_exits_1(service, tmp_path):
    study = {"base": {**BASE, "method": "bbt", "model": "fake:0.2", "budget": 100_000}, "sweep": {"seed": [0, 1, 2]}}
    watching = subprocess.Popen(
        [sys.executable, "-m", "nograd.cli", "study", "submit", write(tmp_path, study), "--name", "slow", "--watch"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **service},
    )
    try:
        study_id = watching.stdout.readline().strip()  # printed before the watch begins
        assert get(service, f"/v1/studies/{study_id}")["name"] == "slow"
        cancelled = nograd("study", "cancel", study_id, env=service)
        assert cancelled.returncode == 0 and cancelled.stdout.split()[0] == study_id, cancelled.stderr
        out, err = watching.communicate(timeout=60)
    finally:
        watching.kill()
    assert watching.returncode == 1, err  # not every job succeeded
    assert out.splitlines()[1].split() == ["(base)", "3/3", "-", "-"]  # no succeeded job: no metrics
    assert get(service, f"/v1/studies/{study_id}")["counts"]["cancelled"] == 3


def test_refusals_are_one_line(service, tmp_path):
    bad = nograd("study", "submit", "-", env=service, stdin=json.dumps({"base": BASE, "sweep": {"colour": ["red"]}}))
    assert "sweep.colour" in one_error_line(bad) and "options.dim" in bad.stderr
    dup = nograd("study", "submit", write(tmp_path, {"base": BASE, "sweep": {"method": ["bbt", "bbt"]}}), env=service)
    assert "sweep.method[1]" in one_error_line(dup)
    (tmp_path / "broken.json").write_text("{not json")
    assert "is not JSON" in one_error_line(nograd("study", "submit", str(tmp_path / "broken.json"), env=service))
    shape = nograd("study", "submit", write(tmp_path, {"sweep": {}}), env=service)
    assert "base, sweep" in one_error_line(shape)
    missing = nograd("study", "show", "study_missing", env=service)
    assert "HTTP 404" in one_error_line(missing) and "nograd study list" in missing.stderr
    assert "No such file" in one_error_line(nograd("study", "submit", str(tmp_path / "none.json"), env=service))
