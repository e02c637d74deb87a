"""The service with the real built-in model: `nograd serve` with Redis and a separate `nograd worker` holding
SmolLM2-135M; a BBT job submitted over HTTP completes, and its result matches the same run done in-process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from procs import RedisServer, create_key, free_port, serve, wait_until, worker
from runs import resolved, task_files

from nograd.artifacts import read_prompt
from nograd.endpoints import local_client
from nograd.pipeline import run
from nograd.sdk import Client

pytestmark = [pytest.mark.slow, pytest.mark.redis]

SEARCH = {"method": "bbt", "budget": 20, "seed": 0, "k_shot": 2, "dev_every": 10}
OPTIONS = {"popsize": 10, "dim": 50}


def test_bbt_job_over_http_with_the_real_model_matches_the_in_process_run(tmp_path):
    # trec as an uploaded dataset, 60 test questions rather than the task's 500 (most of this test's time on an
    # AVX2 CPU); 2-shot takes 2 train and 2 dev rows of the 8 per label
    train, test, format_ = task_files(tmp_path, "trec", per_label=8, n_test=60)
    redis = RedisServer(tmp_path / "redis", persistent=False).start()
    procs = []
    try:
        data = tmp_path / "data"
        key = create_key(data, "t")
        port = free_port()
        procs.append(serve(data, redis.url, port, models="smollm2-135m"))
        procs.append(worker(redis.url, "smollm2-135m", tmp_path / "worker.log", "--memory-cap-mb", "64"))
        with Client(f"http://127.0.0.1:{port}", key) as api:
            dataset = api.upload(train, test_file=test, **format_)
            job_id = api.submit(**SEARCH, dataset_id=dataset["id"], model="smollm2-135m", options=OPTIONS)["id"]
            job = wait_until(
                lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(api.job(job_id)),
                600,
                "the job",
                interval=1.0,
            )
            assert job["status"] == "succeeded", job
            assert job["calls"] == 20 and job["test_metric"] is not None
            z = read_prompt(api.prompt(job_id))["x"]
    finally:
        for proc in procs:
            proc.kill()
        redis.stop()
    files = {"task": None, "dataset": str(train), "test_dataset": str(test)}
    config = resolved(**SEARCH, **OPTIONS, **format_, **files, memory_cap_mb=64)
    direct = asyncio.run(run(config, local_client(config)))
    assert job["result"]["calls"] == direct["calls"] == 20
    # Same search, model and rows; the queue carries whole populations, so the scores, and with them the selected
    # prompt and its metrics, are the ones the in-process run computes.
    assert job["best_dev_metric"] == pytest.approx(direct["dev_metric"])
    assert job["test_metric"] == pytest.approx(direct["test_metric"])
    assert z.shape == (50,) and np.all(np.isfinite(z))


def test_the_main_job_embedded_service_with_the_built_in_model(tmp_path):
    """What `bash scripts/setup.sh run` starts: `nograd serve --auth off` with no Redis, the built-in model in the
    in-process worker. A baseline job over HTTP completes with the manual prompt's known metric range."""
    port = free_port()
    proc = serve(tmp_path / "data", None, port, "--auth", "off", models="smollm2-135m")
    try:
        with Client(f"http://127.0.0.1:{port}", api_key="") as api:
            assert [m["name"] for m in api.models()] == ["smollm2-135m"]
            job_id = api.submit(method="manual", task="trec", k_shot=4)["id"]
            job = wait_until(
                lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(api.job(job_id)),
                600,
                "the job",
                interval=1.0,
            )
        assert job["status"] == "succeeded", job
        assert 0.2 < job["test_metric"] < 0.6  # trec manual prompt: 0.344 in the quality bench
    finally:
        proc.terminate()
