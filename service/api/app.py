"""The FastAPI application: routes, error mapping, and the background job runner and embedded worker."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nograd.engine import build_engine

from ..executor import JobExecutor
from ..metrics import WorkerMetrics
from ..queue import BatchQueue, queue_from_settings
from ..secrets import SecretBox
from ..settings import Settings, get_settings
from ..store import Store
from ..worker import Worker, engines_from_settings
from . import errors, security
from .limits import RequestLimits
from .routes import catalog, datasets, jobs, secrets, studies
from .telemetry import RequestTelemetry

log = logging.getLogger("nograd.api")
STATIC = Path(__file__).parent / "static"


#: HTTP latencies: most routes answer in milliseconds; uploads and store-bound listings may take seconds.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process): the queue, jobs and
    workers (set at each scrape of `/metrics`), this runner's batches, the HTTP requests (`telemetry`), and the
    embedded worker's `WorkerMetrics` (`nograd.service.metrics`; no series without an embedded worker)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("nograd_queue_depth", "batches waiting or in progress", ["model"], registry=r)
        self.jobs = Gauge("nograd_jobs", "jobs by status", ["status"], registry=r)
        self.workers = Gauge("nograd_workers", "live workers", registry=r)
        self.worker_batches = Gauge("nograd_worker_batches_done", "batches a worker finished", ["worker"], registry=r)
        self.batches = Counter("nograd_batches", "evaluation batches completed for this runner's jobs", registry=r)
        self.roundtrip = Histogram(
            "nograd_batch_roundtrip_seconds",
            "enqueue -> all results of one evaluation",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.http_requests = Counter(
            "nograd_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "nograd_http_request_seconds",
            "seconds to answer an HTTP request (event streams: to their headers)",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.worker = WorkerMetrics(r)

    def on_batch(self, seconds: float, n_batches: int) -> None:
        self.batches.inc(n_batches)
        self.roundtrip.observe(seconds)

    def on_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request ended (`route`: its template, or `unmatched`)."""
        self.http_requests.labels(method=method, route=route, status=str(status)).inc()
        self.http_seconds.labels(method=method, route=route).observe(seconds)


async def _embedded_worker(app: FastAPI, settings, queue, engines: dict | None, stop: asyncio.Event) -> None:
    """Load the models, then serve them from this process until `stop`. The API answers while they load (the
    built-in model's first load converts its GGUF file, ~20 s): jobs wait for the worker in phase `loading`, and
    `app.state.embedded` says how loading goes (`/readyz` shows it; 503 if it failed). A stop during loading
    returns at once (the loading thread is a daemon: it does not hold the process up)."""
    names = list(settings.models) if engines is None else list(engines)
    app.state.embedded = {"status": "loading", "models": names}
    if engines is None:
        log.info("loading %s for the embedded worker; the API answers meanwhile", ", ".join(names))
    try:
        loaded = engines if engines is not None else await _load_until(stop, settings, app.state.metrics.worker)
    except Exception as exc:
        log.error("the embedded worker could not load %s: %s", ", ".join(names), exc)
        app.state.embedded = {"status": "failed", "models": names}  # /readyz needs no key: the reason is logged
        return
    if loaded is None:  # stopped while loading
        return
    app.state.embedded = {"status": "ready", "models": names}
    # In-process queue: a short poll makes shutdown prompt (taking from it is a cheap local check).
    worker = Worker(queue, loaded, poll=0.1 if settings.redis_url is None else 1.0, metrics=app.state.metrics.worker)
    await worker.run(stop)


async def _load_until(stop: asyncio.Event, settings, metrics: WorkerMetrics) -> dict | None:
    """The engines of `settings.models`, built in a daemon thread (their load times go to `metrics`); None if
    `stop` is set first."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(outcome) -> None:
        try:  # the loop may have closed meanwhile (the server stopped): then nobody waits for the engines
            loop.call_soon_threadsafe(outcome)
        except RuntimeError:
            pass

    def build() -> None:
        try:
            # build_engine: this module's, for tests
            engines = engines_from_settings(settings, build_engine, on_loaded=metrics.on_loaded)
        except Exception as exc:
            failure = exc  # `exc` itself is unbound once the handler ends, before the loop runs the callback
            settle(lambda: done.done() or done.set_exception(failure))
        else:
            settle(lambda: done.done() or done.set_result(engines))

    threading.Thread(target=build, name="nograd-model-load", daemon=True).start()
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not done.done():
        done.cancel()
        return None
    return done.result()


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId: its function's name (`create_job`, `list_jobs`), which client generators
    turn into method names; tests/service/test_openapi.py checks that no two operations share one."""
    return route.name


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    queue: BatchQueue | None = None,
    engines: dict | None = None,
) -> FastAPI:
    """The service. `store`, `queue` and `engines` (model name -> engine for the embedded worker) default to what
    `settings` describe; tests pass their own."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """State the routes read: `store`; `queue`, a handle whose calls give up after `ready_timeout` (a route
        answers, or fails with 503, while Redis is away), whereas the runner and the embedded worker keep the
        patient queue that rides out a Redis restart; `runner` (None without one); `stopping`, an asyncio.Event
        set as soon as the server begins to shut down (`nograd serve` sets it when uvicorn starts its graceful
        shutdown, this lifespan when it exits at the latest): long-lived responses (event streams) watch it and
        end, so the shutdown reaches the step below that hands running jobs back."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.store = store or Store(settings.db_url, auto_upgrade=settings.db_auto_upgrade)
        patient = queue or queue_from_settings(settings)
        app.state.queue = patient.bounded(settings.ready_timeout)
        app.state.stopping = asyncio.Event()
        stop, background = asyncio.Event(), []
        app.state.runner = None
        app.state.embedded = None
        if settings.redis_url is None or settings.embedded_worker:
            background.append(asyncio.create_task(_embedded_worker(app, settings, patient, engines, stop)))
        if settings.run_jobs:
            runner = JobExecutor.from_settings(app.state.store, patient, settings, on_batch=app.state.metrics.on_batch)
            app.state.runner = runner
            background.append(asyncio.create_task(runner.run(stop), name="job-runner"))
        try:
            yield
        finally:
            app.state.stopping.set()
            stop.set()  # the runner hands its jobs back (lease cleared; they resume from their checkpoints)
            await asyncio.gather(*background, return_exceptions=True)
            if queue is None:
                await patient.close()
            if store is None:
                app.state.store.close()

    app = FastAPI(
        title="nograd",
        version="0.1.0",
        lifespan=lifespan,
        description="Gradient-free prompt tuning for language models you can only query.",
        docs_url=None,  # /docs comes from security.install (vendored Swagger UI, no CDN); no ReDoc (no offline copy)
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.secret_box = SecretBox.from_settings(settings)
    errors.install(app)

    # Outermost: bodies are bounded and, with auth on, their sender known before a byte is read.
    app.add_middleware(
        RequestLimits,
        max_body=int(settings.max_body_mb * 2**20),
        max_upload=int(settings.max_upload_mb * 2**20),
        authenticate=(lambda key: app.state.store.tenant_for_key(key)) if settings.auth else None,
    )
    security.install(app, settings)  # outside the limits: Host/Origin checks and headers on every response
    # Outermost: every response, refusals included, gets a request id, an access line and its HTTP metrics.
    app.add_middleware(RequestTelemetry, metrics=app.state.metrics, api=app)

    for module in (jobs, studies, datasets, catalog, secrets):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The dashboard (static; it calls the API with the key the user enters)."""
        return FileResponse(STATIC / "index.html")

    return app
