"""A model worker's Prometheus metrics, and the small HTTP server `nograd worker --metrics-port` serves them on.

Metric names (the dashboard, `deploy/grafana/nograd.json`, reads them; README "Logs and metrics"):

- `nograd_worker_batches_total{model}`: batches this process finished (counter);
- `nograd_worker_batch_seconds{model}`: how long each took, from taking it to its result (histogram; its `_sum`'s
  rate is the fraction of the time the worker was busy);
- `nograd_worker_model_load_seconds{model}`: how long loading the model took (gauge);
- `nograd_worker_device_memory_bytes{device}`: memory in use on each device the models sit on, read at each
  scrape: `torch.cuda.memory_allocated` on a CUDA device, the process's resident memory for `device="cpu"`.

Labels are the operator's model and device names, never a tenant's data. An API process with an embedded worker
registers the same metrics in its own registry (its `/metrics`).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("nograd.worker")

#: Batch latencies from a fake model's milliseconds to a large model's minutes.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerMetrics:
    """The metrics of the workers in one process, in `registry` (a new one unless given). Thread-safe, as
    prometheus_client's metrics are: models load in a thread."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.batches = Counter("nograd_worker_batches", "batches this worker finished", ["model"], registry=r)
        self.batch_seconds = Histogram(
            "nograd_worker_batch_seconds",
            "seconds from taking a batch to its result",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "nograd_worker_model_load_seconds", "seconds loading the model took", ["model"], registry=r
        )
        self.memory = DeviceMemory()
        r.register(self.memory)

    def on_batch(self, model: str, seconds: float) -> None:
        """A batch of `model` finished in `seconds`."""
        self.batches.labels(model=model).inc()
        self.batch_seconds.labels(model=model).observe(seconds)

    def on_loaded(self, model: str, seconds: float) -> None:
        """`model` took `seconds` to load."""
        self.load_seconds.labels(model=model).set(seconds)

    def serve(self, models: Iterable[str], devices: Iterable[str]) -> None:
        """A worker starts serving `models` on `devices`: their series exist from now on (at zero), and the memory
        of `devices` is reported."""
        for model in models:
            self.batches.labels(model=model)
            self.batch_seconds.labels(model=model)
        self.memory.watch(devices)


class DeviceMemory:
    """`nograd_worker_device_memory_bytes{device}`, read when scraped, for the devices `watch`ed."""

    NAME = "nograd_worker_device_memory_bytes"
    HELP = "memory in use on the device (CUDA: allocated by torch; cpu: the process's resident memory)"

    def __init__(self):
        self.devices: set[str] = set()

    def watch(self, devices: Iterable[str]) -> None:
        self.devices.update(devices)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["device"])]

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["device"])
        for device in sorted(self.devices):
            used = device_memory(device)
            if used is not None:
                family.add_metric([device], used)
        return [family]


def device_memory(device: str) -> float | None:
    """Bytes in use on `device`: torch's allocated memory on CUDA (None when torch or CUDA is not there), this
    process's resident memory on `cpu`; None for other devices."""
    if device.startswith("cuda"):
        torch = sys.modules.get("torch")  # a process whose model sits on CUDA has imported torch
        if torch is None or not torch.cuda.is_available():
            return None
        return float(torch.cuda.memory_allocated(device))
    if device == "cpu":
        return float(resident_bytes())
    return None


def resident_bytes() -> int:
    """This process's resident memory now (Linux `/proc`); elsewhere its peak, the closest the OS tells."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux and BSD


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
    """Serve `registry` as Prometheus text on `http://addr:port/metrics` (any path answers) from a daemon thread,
    beside the worker's asyncio loop; returns the server (`.shutdown()` stops it). Raises ValueError naming the
    setting when the port is taken."""
    try:
        server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ValueError(
            f"cannot serve worker metrics on {addr}:{port} ({exc.strerror or exc}); give each worker on this host "
            "its own --metrics-port (NOGRAD_WORKER_METRICS_PORT), or 0 for none"
        ) from None
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
    return server
