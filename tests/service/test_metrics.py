"""Prometheus metrics: the API's HTTP metrics (route templates, bounded labels, event streams), its per-worker gauge
(no workers that went away), and the worker metrics (`nograd.service.metrics`), in-process and as
`nograd worker --metrics-port` serves them."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from apiclient import Api
from procs import Proc, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_api import FAST, make_api

from nograd.service.metrics import WorkerMetrics, device_memory, serve_metrics


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value of Prometheus text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labelled(found: dict[tuple, float], name: str) -> dict[tuple, float]:
    return {labels: value for (sample, labels), value in found.items() if sample == name}


@pytest.fixture
def api(tmp_path):
    client, _ = make_api(tmp_path)
    with client:
        store = client.app.state.store
        client.app.state.events_poll = 0.05
        yield Api(client, {"alice": store.create_key("alice")}, FAST)


def scrape(api: Api) -> dict[tuple, float]:
    operator = {"Authorization": f"Bearer {api.client.app.state.operator_key}"}
    response = api("GET", "/metrics", None, headers=operator)
    assert response.status_code == 200
    return samples(response.text)


# ------------------------------------------------------------------ HTTP
def test_http_requests_are_counted_by_route_template_never_by_path(api):
    job = api.submit()
    api.wait(job["id"])
    assert api("GET", "/v1/jobs/job_doesnotexist").status_code == 404
    assert api("GET", "/no/such/page/123").status_code == 404
    assert api("POST", "/v1/jobs", None, json=FAST).status_code == 401  # refused before routing (RequestLimits)
    assert api("BREW", "/v1/jobs").status_code == 405
    found = scrape(api)
    requests = labelled(found, "nograd_http_requests_total")
    by_route = {(dict(k)["method"], dict(k)["route"], dict(k)["status"]): v for k, v in requests.items()}
    assert by_route[("POST", "/v1/jobs", "201")] == 1 and by_route[("POST", "/v1/jobs", "401")] == 1
    assert by_route[("GET", "/v1/jobs/{job_id}", "404")] == 1 and by_route[("GET", "/v1/jobs/{job_id}", "200")] >= 1
    assert by_route[("GET", "unmatched", "404")] == 1 and by_route[("other", "/v1/jobs", "405")] == 1
    routes = {dict(k)["route"] for k in requests} | {
        dict(k)["route"] for k in labelled(found, "nograd_http_request_seconds_count")
    }
    assert not any(job["id"] in r or "123" in r for r in routes), routes
    latency = labelled(found, "nograd_http_request_seconds_count")
    assert (
        latency[(("method", "GET"), ("route", "/v1/jobs/{job_id}"))]
        == by_route[("GET", "/v1/jobs/{job_id}", "200")] + 1
    )


def test_an_event_stream_is_counted_when_it_ends(api):
    job = api.submit()
    api.wait(job["id"])
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}/events"), ("status", "200"))
    with api.stream(job["id"]) as response:
        assert response.status_code == 200
        before = labelled(scrape(api), "nograd_http_requests_total").get(route, 0)
        assert sum(1 for line in response.iter_lines() if line.startswith("event: end")) == 1
    assert before == 0
    assert labelled(scrape(api), "nograd_http_requests_total")[route] == 1


def test_the_per_worker_gauge_drops_workers_that_went_away(api):
    queue = api.client.app.state.queue
    api.client.portal.call(queue.heartbeat, {"id": "w-gone", "batches_done": 7}, 60.0)
    gauge = labelled(scrape(api), "nograd_worker_batches_done")
    assert gauge[(("worker", "w-gone"),)] == 7
    api.client.portal.call(queue.leave, "w-gone")
    gauge = labelled(scrape(api), "nograd_worker_batches_done")
    assert (("worker", "w-gone"),) not in gauge and len(gauge) == 1  # the embedded worker stays


# ------------------------------------------------------------------ workers
def test_the_embedded_worker_reports_batches_latency_load_time_and_memory(api):
    api.wait(api.submit()["id"])
    found = scrape(api)
    batches = labelled(found, "nograd_worker_batches_total")[(("model", "fake"),)]
    assert batches >= 4  # one population per generation at least
    assert labelled(found, "nograd_worker_batch_seconds_count")[(("model", "fake"),)] == batches
    assert labelled(found, "nograd_worker_batch_seconds_sum")[(("model", "fake"),)] > 0
    assert (("model", "fake"),) in labelled(found, "nograd_worker_model_load_seconds")
    assert labelled(found, "nograd_worker_device_memory_bytes")[(("device", "cpu"),)] > 10 * 2**20


def test_device_memory_is_the_resident_memory_on_cpu_and_nothing_for_unknown_devices():
    assert device_memory("cpu") > 10 * 2**20
    assert device_memory("tpu:0") is None


@pytest.mark.gpu
def test_device_memory_on_cuda_is_what_torch_allocated():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    before = device_memory("cuda:0")
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda:0")
    assert device_memory("cuda:0") - before >= 64 * 2**20
    del block


def test_the_metrics_server_serves_the_registry_and_names_the_setting_when_the_port_is_taken():
    metrics = WorkerMetrics()
    metrics.serve(["fake"], ["cpu"])
    metrics.on_loaded("fake", 1.5)
    metrics.on_batch("fake", 0.2)
    port = free_port()
    server = serve_metrics(metrics.registry, port, addr="127.0.0.1")
    try:
        found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        assert found[("nograd_worker_batches_total", (("model", "fake"),))] == 1
        assert found[("nograd_worker_model_load_seconds", (("model", "fake"),))] == 1.5
        with pytest.raises(ValueError, match="--metrics-port"):
            serve_metrics(metrics.registry, port, addr="127.0.0.1")
    finally:
        server.shutdown()


@pytest.mark.redis
def test_nograd_worker_serves_its_metrics_and_logs_json(redis_server, tmp_path):
    port = free_port()
    log = tmp_path / "worker.log"
    base = ["worker", "--redis-url", redis_server.url, "--model", "fake", "--heartbeat", "0.5"]
    proc = Proc([*base, "--metrics-port", str(port), "--id", "w-m"], log, env={"NOGRAD_LOG_FORMAT": "json"}).start()
    try:

        def scraped():
            if proc.proc.poll() is not None:
                raise RuntimeError(proc.output())
            try:
                return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text)
            except httpx.HTTPError:
                return None

        wait_until(lambda: "serving fake" in proc.output(), 60, "the worker to serve")  # its signal handlers are set
        found = wait_until(scraped, 10, "the worker's metrics")
        assert found[("nograd_worker_batches_total", (("model", "fake"),))] == 0
        assert ("nograd_worker_model_load_seconds", (("model", "fake"),)) in found
        assert found[("nograd_worker_device_memory_bytes", (("device", "cpu"),))] > 0
        with socket.socket() as taken:  # an operator's chosen port that is taken: the worker refuses to start
            taken.bind(("0.0.0.0", 0))
            refused = Proc([*base, "--metrics-port", str(taken.getsockname()[1])], tmp_path / "refused.log")
            refused.start().proc.wait(60)
        assert refused.proc.returncode != 0 and "--metrics-port" in refused.output()
    finally:
        assert proc.terminate() == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line is one JSON object
    assert any(r["message"] == "worker w-m serving fake" and r["logger"] == "nograd.worker" for r in records)
