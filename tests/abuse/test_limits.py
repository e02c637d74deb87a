"""Admission control and request limits under abuse: schema-valid jobs that would need gigabytes are refused at
submit with the option to lower and the largest value that fits; bodies are bounded while they stream, and an
anonymous body costs a header check; odd inputs (NaN, nesting bombs, dim 1) get a 422, never a 500.

Process tests measure the server's peak RSS (VmHWM) around each attack; every test bounds its own time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from procs import Proc, free_port, peak_rss_mb, wait_until
from runs import resolved

from nograd.clients.types import EvalRequest, ModelInfo, ProjectionSpec, PromptSpec
from nograd.costs import MB, Limits, check, estimate
from nograd.engine.projection import Projections
from nograd.service.api import create_app
from nograd.service.settings import Settings

HUGE_BBT = {
    "method": "bbt",
    "task": "trec",
    "model": "fake:0.05",
    "budget": 5000,
    "options": {"dim": 10000, "popsize": 1000},
}


# ---------------------------------------------------------------- a real server process
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`nograd serve` (auth on, fake models, small upload limit) with its own temporary directory."""
    root = tmp_path_factory.mktemp("limits")
    port, tmp = free_port(), root / "tmp"
    tmp.mkdir()
    env = {"NOGRAD_MAX_UPLOAD_MB": "2", "TMPDIR": str(tmp)}
    args = ["serve", "--data-dir", str(root / "data"), "--port", str(port), "--models", "fake,fake:0.05"]
    proc = Proc(args, root / "serve.log", env=env).start()
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.proc.poll() is not None:
            raise RuntimeError(proc.output()[-2000:])
        try:
            return httpx.get(f"{url}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "nograd serve")
        key = subprocess.run(
            [sys.executable, "-m", "nograd.cli", "keys", "create", "--tenant", "t1", "--data-dir", str(root / "data")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        yield {"url": url, "pid": proc.proc.pid, "key": key, "tmp": tmp, "proc": proc}
    finally:
        proc.terminate()


FILE_PART = (
    b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def _chunks(total: int, sent: list[int], chunk: int = 1 << 20, prefix: bytes = b""):
    piece = b"x" * chunk
    if prefix:
        sent[0] += len(prefix)
        yield prefix
    while sent[0] < total:
        sent[0] += chunk
        yield piece


def _post_chunked(url: str, total: int, headers: dict | None = None) -> tuple[int | None, int]:
    """POST `total` bytes as a chunked body (a multipart file part for uploads); (status or None when the server
    hung up, bytes the client sent)."""
    sent = [0]
    prefix = FILE_PART if "multipart" in (headers or {}).get("content-type", "") else b""
    try:
        response = httpx.post(url, content=_chunks(total, sent, prefix=prefix), headers=headers or {}, timeout=30)
        return response.status_code, sent[0]
    except httpx.HTTPError:
        return None, sent[0]


def test_anonymous_bodies_are_refused_before_a_byte_is_read(server):
    before = peak_rss_mb(server["pid"])
    results: list[tuple[int | None, int]] = []
    total = 600 * MB

    def attack(path: str, headers: dict) -> None:
        results.append(_post_chunked(server["url"] + path, total, headers))

    threads = [
        threading.Thread(target=attack, args=("/v1/jobs", {"content-type": "application/json"})) for _ in range(4)
    ]
    threads.append(
        threading.Thread(target=attack, args=("/v1/datasets", {"content-type": "multipart/form-data; boundary=xyz"}))
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 5
    for status, sent in results:
        assert status in (401, None)
        assert sent < 64 * MB, f"the server read {sent / MB:.0f} MB of an anonymous body"
    assert peak_rss_mb(server["pid"]) - before < 50
    spooled = sum(p.stat().st_size for p in Path(server["tmp"]).rglob("*") if p.is_file())
    assert spooled < MB


def test_bodies_over_the_limit_stop_while_streaming(server):
    auth = {"Authorization": f"Bearer {server['key']}"}
    before = peak_rss_mb(server["pid"])
    status, sent = _post_chunked(server["url"] + "/v1/jobs", 200 * MB, {**auth, "content-type": "application/json"})
    assert status in (413, None) and sent < 64 * MB
    status, sent = _post_chunked(
        server["url"] + "/v1/datasets", 200 * MB, {**auth, "content-type": "multipart/form-data; boundary=xyz"}
    )
    assert status in (413, None) and sent < 64 * MB
    declared = httpx.post(
        server["url"] + "/v1/jobs", content=b"{" * (2 * MB), headers={**auth, "content-type": "application/json"}
    )
    assert declared.status_code == 413 and "NOGRAD_MAX_BODY_MB" in declared.json()["detail"]
    assert peak_rss_mb(server["pid"]) - before < 50
    assert httpx.get(server["url"] + "/livez").status_code == 200


def test_schema_valid_jobs_that_need_gigabytes_are_refused_and_the_api_stays_flat(server):
    auth = {"Authorization": f"Bearer {server['key']}"}
    before = peak_rss_mb(server["pid"])
    for _ in range(3):
        response = httpx.post(server["url"] + "/v1/jobs", json=HUGE_BBT, headers=auth, timeout=30)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "options.dim"]
        assert "NOGRAD_MAX_JOB_MEMORY_MB" in detail["msg"] and "largest dim" in detail["msg"]
    rlprompt = {
        "method": "rlprompt",
        "task": "trec",
        "model": "fake:0.05",
        "budget": 5000,
        "options": {"popsize": 1000, "top_k": 50000, "prompt_length": 64},
    }
    response = httpx.post(server["url"] + "/v1/jobs", json=rlprompt, headers=auth, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][1].startswith("options.")
    budget = httpx.post(server["url"] + "/v1/jobs", json={**HUGE_BBT, "budget": 1_000_000}, headers=auth)
    assert budget.status_code == 422 and budget.json()["detail"][0]["loc"] == ["body", "budget"]
    assert peak_rss_mb(server["pid"]) - before < 50


# ---------------------------------------------------------------- in process
@pytest.fixture
def client(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], auth=False, max_upload_mb=1)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


def _job(**options) -> dict:
    return {"method": "bbt", "task": "trec", "model": "fake", "budget": 40, "options": options}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_floats_are_a_422_that_renders(client, value):
    body = json.dumps(_job(dim=8)).replace('"dim": 8', f'"dim": 8, "sigma0": {value}')
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][-2:] == ["options", "sigma0"]
    assert "finite" in detail["msg"]


def test_long_inputs_are_not_echoed_back(client):
    response = client.post("/v1/jobs", json={**_job(), "method": "x" * 100_000})
    assert response.status_code == 422
    assert len(response.content) < 5000


@pytest.mark.parametrize(
    ("job", "field"),
    [
        (_job(dim=1), "options.dim"),
        (_job(dim=8, popsize=2), "options.popsize"),
        ({**_job(), "method": "icl_search", "k_shot": 1, "options": {"icl_shots": 1}}, "options.prompt_length"),
    ],
)
def test_lower_bounds_that_would_fail_at_run_time_are_checked_at_submit(client, job, field):
    response = client.post("/v1/jobs", json=job)
    assert response.status_code == 422, response.text
    assert ".".join(response.json()["detail"][0]["loc"][1:]) == field


def test_a_json_nesting_bomb_body_is_a_422_that_says_so(client):
    bomb = '{"method": ' + "[" * 50_000 + "]" * 50_000 + "}"
    response = client.post("/v1/jobs", content=bomb, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert "nested too deeply" in response.json()["detail"][0]["msg"]
    assert client.get("/v1/jobs/nope").status_code == 404  # other HTTP errors keep FastAPI's handling


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_a_json_nesting_bomb_upload_is_a_422(client, layout):
    bomb = "[" * 100_000 + "]" * 100_000
    content = f'{{"text": {bomb}, "label": "a"}}\n' if layout == "jsonl" else f'[{{"text": "x", "label": {bomb}}}]'
    response = client.post(
        "/v1/datasets",
        files={"file": (f"bomb.{'jsonl' if layout == 'jsonl' else 'json'}", content.encode())},
        data={"template": "{text} It was {mask}.", "verbalizer": "a:good"},
    )
    assert response.status_code == 422, response.text
    assert "nested deeper" in response.json()["detail"][0]["msg"]
    shallow = '{"text": [[1]], "label": "a"}\n'
    assert client.post(
        "/v1/datasets",
        files={"file": ("ok.jsonl", shallow.encode())},
        data={"template": "{text} It was {mask}.", "verbalizer": "a:good"},
    ).status_code in (201, 422)  # a list is no text: refused (or accepted) by the row checks, not the depth limit


def test_bbtv2_with_long_prompts_is_refused_by_the_worker_estimate(client):
    # The fake model is tiny (hidden 16): the optimizer state of 4 layers x dim^2 is what does not fit.
    response = client.post("/v1/jobs", json={**_job(dim=10_000, n_tokens=256), "method": "bbtv2"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "options.dim"


# ---------------------------------------------------------------- the cost model and the engine's checks
SMOLLM2 = ModelInfo("smollm2", "causal", hidden_size=576, n_layers=30, max_length=8192)
LIMITS = Limits(runner_memory=1024 * MB, worker_memory=2048 * MB, max_calls=200_000, activations=256 * MB)


def test_the_largest_value_named_fits_and_one_more_does_not():
    config = resolved(method="bbtv2", n_tokens=256, dim=2000, task="trec")
    with pytest.raises(ValueError) as refused:
        check(config, SMOLLM2, LIMITS, asked=frozenset({"dim"}))
    largest = int(str(refused.value).rsplit(" ", 1)[1])
    from dataclasses import replace

    check(replace(config, dim=largest), SMOLLM2, LIMITS)
    with pytest.raises(ValueError):
        check(replace(config, dim=largest + 1), SMOLLM2, LIMITS)


def test_the_estimate_covers_what_cma_really_allocates():
    """pycma's memory, measured in a fresh process (peak RSS), is within the estimate and not far below it."""
    script = (
        "import numpy as np\n"
        "from nograd.optimizers import CMA\n"
        "def peak():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024\n"
        "base = peak()\n"
        "o = CMA(3000, 40, seed=0)\n"
        "for _ in range(3):\n"
        "    x = o.ask(); o.tell(x, np.random.rand(len(x)))\n"
        "print(peak() - base)\n"
    )
    used = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    estimated = estimate(resolved(method="bbt", dim=3000, popsize=40, task="trec"), SMOLLM2).runner
    assert used <= estimated <= 3 * used, (used / MB, estimated / MB)


def test_projection_cache_is_bounded_in_bytes():
    cache = Projections(max_bytes=3 * 50 * 1000 * 4)
    spec = ProjectionSpec(seed=1, dim=50)
    for layer in range(10):
        cache.unit_matrix(spec, layer, 1000)
        assert cache.cached_bytes <= cache.max_bytes
    assert cache.cached_bytes == 3 * 50 * 1000 * 4
    big = cache.unit_matrix(ProjectionSpec(seed=1, dim=500), 0, 1000)  # larger than the cache: used, not kept
    assert big.shape == (500, 1000) and cache.cached_bytes <= cache.max_bytes
    # A base prompt (one candidate) is cached, so deep requests do not rebuild every layer's matrix.
    z = np.ones((1, 50))
    first = cache.materialize(spec, z, 4, 10, 100, scale=0.1)
    assert cache.materialize(spec, z, 4, 10, 100, scale=0.1) is first


def test_the_engine_refuses_a_batch_over_its_budget_before_allocating(causal_handle):
    from nograd.engine import Engine, EngineError
    from nograd.pipeline import task_spec
    from nograd.tasks import get_task

    engine = Engine(causal_handle, memory_cap_mb=1, memory_budget_mb=2)
    task = get_task("mr")
    from nograd.pipeline import to_examples

    request = EvalRequest(
        task=task_spec(task),
        examples=to_examples(task, task.pool[:2]),
        prompt=PromptSpec(mode="add", n_tokens=64, projection=ProjectionSpec(dim=2000)),
        z=np.zeros((50, 2000)),
    )
    with pytest.raises(EngineError, match="NOGRAD_WORKER_MEMORY_MB"):
        engine.evaluate(request)
    assert engine.projections.cached_bytes == 0


def test_unknown_shapes_are_estimated_conservatively():
    config = resolved(method="bbtv2", task="trec")
    assert estimate(config, None).runner >= estimate(config, SMOLLM2).runner
