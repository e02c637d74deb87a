"""What the service offers: bundled tasks, models, live workers; health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from nograd.config import RunConfig
from nograd.methods import COMMON_DEFAULTS, METHODS
from nograd.tasks import get_task, list_tasks

from ..deps import CurrentTenant, QueueDep, SettingsDep, StoreDep, live_workers, model_names
from ..schemas import JobOptions, MethodPublic, ModelPublic, TaskPublic, WorkerPublic
from ..security import require_operator

router = APIRouter(tags=["catalog"])
log = logging.getLogger("nograd.api")


@router.get("/v1/tasks", response_model=list[TaskPublic])
def tasks(tenant: CurrentTenant) -> list[dict]:
    """The bundled tasks."""
    out = []
    for name in list_tasks():
        task = get_task(name)
        out.append(
            {
                "name": name,
                "labels": list(task.labels),
                "verbalizer": dict(task.verbalizer),
                "metric": task.metric,
                "template": task.template,
                "pool": len(task.pool),
                "test": len(task.test),
            }
        )
    return out


def _option(name: str, method, schema: dict) -> dict:
    field = schema[name]
    value = next((v for v in field.get("anyOf", [field]) if v.get("type") != "null"), field)
    default = method.defaults.get(name, COMMON_DEFAULTS.get(name, getattr(RunConfig(), name)))
    return {
        "name": name,
        "type": value.get("type", "string"),
        "choices": value.get("enum"),
        "default": None if callable(default) else default,
        "description": field.get("description", ""),
    }


@functools.cache
def _methods() -> list[dict]:
    """The registry as published: it never changes while the process runs, so it is built once."""
    default, schema = RunConfig(), JobOptions.model_json_schema()["properties"]
    return [
        {
            "name": m.name,
            "description": m.description,
            "when": m.when,
            "search": m.is_search,
            "prompt": m.prompt,
            "needs_embeddings": m.needs_embeddings,
            "transfers": m.transfers,
            "endpoint_kinds": list(m.endpoint_kinds(default)),
            "options": [_option(o, m, schema) for o in m.options],
        }
        for m in METHODS.values()
    ]


@router.get("/v1/methods", response_model=list[MethodPublic])
def methods(tenant: CurrentTenant) -> list[dict]:
    """The methods (the registry): what each one searches, its defaults, the options it reads, where it runs."""
    return _methods()


def _public_worker(info: dict, own_jobs: set[str]) -> dict:
    """A worker as a tenant sees it: no host or pid (its default id embeds both, so the id is a digest), and its
    current batch ("job_id/generation") named only when the job is the tenant's, else "busy"."""
    current = info.get("current")
    if current is not None and current.partition("/")[0] not in own_jobs:
        current = "busy"
    return {
        **{k: v for k, v in info.items() if k not in ("host", "pid")},
        "id": "w_" + hashlib.sha256(info["id"].encode()).hexdigest()[:12],
        "current": current,
        "models": sorted(info.get("models", {})),
        "heartbeat_age": time.time() - info["last_heartbeat"],
    }


@router.get("/v1/models", response_model=list[ModelPublic])
async def models(tenant: CurrentTenant, queue: QueueDep, settings: SettingsDep) -> list[dict]:
    """Models jobs can use: those configured for this service and those live workers serve. While the queue
    (Redis) does not answer within `ready_timeout`: the configured models only, each with 0 workers (jobs for them
    are still accepted; they run once Redis is back)."""
    workers = await live_workers(queue) or []
    names = sorted(model_names(settings, workers))
    out = []
    for name in names:
        serving = [w for w in workers if name in w.get("models", {})]
        out.append({"name": name, "workers": len(serving), "info": serving[0]["models"][name] if serving else None})
    return out


@router.get("/v1/workers", response_model=list[WorkerPublic])
async def workers(tenant: CurrentTenant, queue: QueueDep, store: StoreDep) -> list[dict]:
    """Live workers: models, devices, batches done, last heartbeat; what each one runs, if it is yours."""
    live = await queue.workers()
    busy = {w["current"].partition("/")[0] for w in live if w.get("current")}

    def own() -> set[str]:
        return {job_id for job_id in busy if store.get_job(job_id, tenant) is not None}

    own_jobs = await asyncio.to_thread(own) if busy else set()
    return [_public_worker(w, own_jobs) for w in live]


@router.get("/livez")
def livez() -> dict:
    """Liveness: the process answers; it touches neither the store nor the queue (restart on this, not readyz)."""
    return {"status": "ok"}


async def _unready(name: str, call, timeout: float) -> str | None:
    """None when `call` (an awaitable) finishes within `timeout` seconds, else what went wrong (no details: the
    route needs no key; the log has them)."""
    try:
        await asyncio.wait_for(call, timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as exc:
        log.warning("readiness: the %s failed", name, exc_info=True)
        return f"unavailable ({type(exc).__name__})"
    return None


@router.get(
    "/readyz",
    responses={503: {"description": "the store or the queue did not answer, or the server is shutting down"}},
)
@router.get("/healthz", include_in_schema=False)  # the older name, kept as an alias
async def readyz(request: Request, store: StoreDep, queue: QueueDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the store and the queue each answer within `ready_timeout` seconds (checked side by side), else
    503 naming the one that did not; 503 too once the server is shutting down. No key needed."""
    depth: dict[str, int] = {}

    async def queue_depth() -> None:
        depth.update(await queue.depth())

    store_error, queue_error = await asyncio.gather(
        _unready("store", asyncio.to_thread(store.count_by_status), settings.ready_timeout),
        _unready("queue", queue_depth(), settings.ready_timeout),
    )
    stopping = getattr(request.app.state, "stopping", None)
    status = "stopping" if stopping is not None and stopping.is_set() else "ok"
    embedded = getattr(request.app.state, "embedded", None)  # the in-process worker: loading, ready or failed
    if store_error or queue_error or (embedded or {}).get("status") == "failed":
        status = "unavailable"
    body = {
        "status": status,
        "store": store_error or "ok",
        "queue": queue_error or "ok",
        "queue_depth": None if queue_error else sum(depth.values()),
        "runner": request.app.state.runner is not None,
        "embedded_worker": embedded,
    }
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_operator)])
async def metrics(request: Request, store: StoreDep, queue: QueueDep) -> PlainTextResponse:
    """Prometheus metrics (operator key): queue depth, batches, batch round-trip latency, jobs by status, workers.

    Label values are the operator's own names (models workers serve, worker ids, job statuses), never a tenant's
    data; gauges of models and workers that are gone are dropped at each scrape."""
    from prometheus_client import generate_latest

    m = request.app.state.metrics
    depths = await queue.depth()
    counts = await asyncio.to_thread(store.count_by_status)
    live = await queue.workers()
    m.queue_depth.clear()
    for model, depth in depths.items():
        m.queue_depth.labels(model=model).set(depth)
    for status, count in counts.items():
        m.jobs.labels(status=status).set(count)
    m.workers.set(len(live))
    m.worker_batches.clear()
    for w in live:
        m.worker_batches.labels(worker=w["id"]).set(w.get("batches_done", 0))
    return PlainTextResponse(generate_latest(m.registry).decode(), media_type="text/plain; version=0.0.4")
