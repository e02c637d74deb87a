"""What the service offers: bundled tasks, models, live workers; health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import functools
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from nograd.config import RunConfig
from nograd.methods import COMMON_DEFAULTS, METHODS
from nograd.tasks import get_task, list_tasks

from ..deps import CurrentTenant, QueueDep, SettingsDep, StoreDep, model_names
from ..schemas import JobOptions, MethodPublic, ModelPublic, TaskPublic, WorkerPublic

router = APIRouter(tags=["catalog"])


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


def _public_worker(info: dict) -> dict:
    return {**info, "models": sorted(info.get("models", {})), "heartbeat_age": time.time() - info["last_heartbeat"]}


@router.get("/v1/models", response_model=list[ModelPublic])
async def models(tenant: CurrentTenant, queue: QueueDep, settings: SettingsDep) -> list[dict]:
    """Models jobs can use: those configured for this service and those live workers serve."""
    workers = await queue.workers()
    names = sorted(model_names(settings, workers))
    out = []
    for name in names:
        serving = [w for w in workers if name in w.get("models", {})]
        out.append({"name": name, "workers": len(serving), "info": serving[0]["models"][name] if serving else None})
    return out


@router.get("/v1/workers", response_model=list[WorkerPublic])
async def workers(tenant: CurrentTenant, queue: QueueDep) -> list[dict]:
    """Live workers: models, devices, batches done, last heartbeat."""
    return [_public_worker(w) for w in await queue.workers()]


@router.get("/healthz")
async def healthz(request: Request, store: StoreDep, queue: QueueDep) -> dict:
    """Liveness and readiness: the store and the queue answer."""
    await asyncio.to_thread(store.count_by_status)
    depth = await queue.depth()
    return {"status": "ok", "queue_depth": sum(depth.values()), "runner": request.app.state.runner is not None}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, store: StoreDep, queue: QueueDep) -> PlainTextResponse:
    """Prometheus metrics: queue depth, batches, batch round-trip latency, jobs by status, workers."""
    from prometheus_client import generate_latest

    m = request.app.state.metrics
    for model, depth in (await queue.depth()).items():
        m.queue_depth.labels(model=model).set(depth)
    for status, count in (await asyncio.to_thread(store.count_by_status)).items():
        m.jobs.labels(status=status).set(count)
    live = await queue.workers()
    m.workers.set(len(live))
    for w in live:
        m.worker_batches.labels(worker=w["id"]).set(w.get("batches_done", 0))
    return PlainTextResponse(generate_latest(m.registry).decode(), media_type="text/plain; version=0.0.4")
