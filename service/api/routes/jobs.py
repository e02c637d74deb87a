"""Jobs: submit, list, inspect, follow (server-sent events), cancel, download and export the prompt."""

from __future__ import annotations

import asyncio
import io
import zipfile
from dataclasses import replace
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from nograd import costs
from nograd.artifacts import read_prompt
from nograd.clients.endpoint import EndpointConfigError, RemoteLimits
from nograd.clients.guard import check_url
from nograd.clients.kinds import parse_endpoint
from nograd.clients.types import ModelInfo
from nograd.config import JOB_FIELDS, JOB_OPTIONS, ConfigError, ResolvedConfig, RunConfig
from nograd.export import FORMATS, ExportError, export_files
from nograd.methods import METHODS
from nograd.pipeline import located, resolve_run

from ...executor import dataset_file, transfer_options
from ...store import JobStateError, Status
from ..deps import CurrentTenant, QueueDep, SettingsDep, StoreDep, live_workers, model_names
from ..errors import Conflict, Invalid, NotFound, TooMany
from ..schemas import TAG_PATTERN, AnalysisPublic, HistoryPublic, JobCreate, JobPublic, JobsPublic
from ..streams import StreamsDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
QUEUED_RETRY_AFTER = 30  # seconds a tenant over its queued-jobs quota is asked to wait


def _location(field: str) -> str:
    """Where a run option lives in the request body (`ConfigError.field` -> the 422's location): a job field or
    an endpoint setting as it is, a method option under `options`; the rest (template, verbalizer, ...) comes with
    the uploaded dataset."""
    if field in JOB_FIELDS or field.startswith("endpoint"):
        return field
    return f"options.{field}" if field in JOB_OPTIONS else "dataset_id"


def _resolved(body: JobCreate, store, tenant: str, settings) -> tuple[ResolvedConfig, str]:
    """A submission's resolved config (to store: what the job runs with) and the task's display name; the data
    load and split once here, so a job that is accepted can run."""
    if (body.task is None) == (body.dataset_id is None):
        raise Invalid("task", "give exactly one of task (a bundled task, GET /v1/tasks) or dataset_id")
    values = {k: v for k, v in body.options.model_dump().items() if v is not None}
    values.update({name: getattr(body, name) for name in JOB_FIELDS})
    if body.endpoint is not None:
        values.update(endpoint=_endpoint(body, store, tenant, settings), model=_remote_model(body))
    name, path, test = body.task, None, None
    if body.dataset_id is not None:
        dataset = store.get_dataset(body.dataset_id, tenant)
        if dataset is None:
            raise Invalid("dataset_id", f"dataset {body.dataset_id} not found; upload one with POST /v1/datasets")
        name = dataset["name"]
        values.update(dataset["options"], task=None)
        path = dataset_file(store, settings.data_dir, body.dataset_id)
        test = dataset_file(store, settings.data_dir, body.dataset_id, test=True)
    if body.init_from is not None:
        values.update(_transfer(body, store, tenant))
    try:
        resolved, _ = resolve_run(located(RunConfig.from_dict(values), path, test))
    except ConfigError as exc:
        raise Invalid(_location(exc.field), exc.message) from None
    # Stored without this replica's file paths: the job's dataset_id says where its data come from.
    return (replace(resolved, dataset=None, test_dataset=None) if path is not None else resolved), name


def _remote_model(body: JobCreate) -> str:
    return f"{body.endpoint.kind}:{body.endpoint.model}"


def _endpoint(body: JobCreate, store, tenant: str, settings) -> dict:
    """The endpoint settings to store: a URL the operator's allowlist admits, limits within the operator's, a secret
    the tenant has."""
    endpoint = body.endpoint.model_dump(exclude_none=True)
    try:
        config = parse_endpoint(endpoint)
        RemoteLimits.from_settings(settings).check(config)
        check_url(config.base_url, tuple(settings.remote_allow))
    except EndpointConfigError as exc:
        raise Invalid(f"endpoint.{exc.field or 'base_url'}", exc.message) from None
    if config.embedder_model and config.embedder_model not in settings.models:
        raise Invalid(
            "endpoint.embedder_model",
            f"{config.embedder_model!r} is not one of this service's models "
            f"({', '.join(settings.models)}); the operator adds it to NOGRAD_MODELS",
        )
    if config.api_key_secret and store.secret(tenant, config.api_key_secret) is None:
        raise Invalid(
            "endpoint.api_key_secret",
            f"secret {config.api_key_secret!r} not found; store the key with POST /v1/secrets first",
        )
    return endpoint


def _transfer(body: JobCreate, store, tenant: str) -> dict:
    """The projection settings a job starting from another job's prompt must share with it."""
    source = store.get_job(body.init_from, tenant)
    if source is None:
        raise Invalid("init_from", f"job {body.init_from} not found")
    if source["status"] != Status.succeeded.value:
        raise Invalid("init_from", f"job {body.init_from} is {source['status']}; start from a succeeded job")
    if not METHODS[body.method].transfers or source["method"] != body.method:
        raise Invalid(
            "init_from",
            f"a {source['method']} prompt can only start another {source['method']} job "
            f"of a method whose prompts transfer (bbt, bbtv2; this job is {body.method})",
        )
    if source["model"] != body.model:
        raise Invalid("init_from", f"job {body.init_from} tuned {source['model']}, not {body.model}")
    return transfer_options(read_prompt(store.artifact(body.init_from))["spec"])


def check_queued_quota(store, tenant: str, settings, adding: int = 1) -> None:
    """429 when `adding` more queued jobs would take the tenant past `tenant_queued_jobs` waiting. Concurrent
    submissions may pass the check together and go a few over; the quota bounds a flood, not an exact count."""
    queued = store.count_jobs(tenant, Status.queued)
    if queued + adding > settings.tenant_queued_jobs:
        these = "" if adding == 1 else f", and these {adding} would make {queued + adding}"
        raise TooMany(
            f"queued-jobs quota: {queued} of your jobs are waiting to start{these}; a tenant may have at most "
            f"{settings.tenant_queued_jobs} queued (tenant_queued_jobs, NOGRAD_TENANT_QUEUED_JOBS="
            f"{settings.tenant_queued_jobs}); submit more once some have started, or cancel some",
            retry_after=QUEUED_RETRY_AFTER,
        )


def _model_shape(workers: list[dict] | None, model: str) -> ModelInfo | None:
    """The served model's shape from a live worker's heartbeat; None when no worker serves it yet or the queue did
    not answer (the runner checks again once it knows the shape)."""
    for worker in workers or []:
        if model in worker.get("models", {}):
            return ModelInfo.from_dict(worker["models"][model])
    return None


def _admit(body: JobCreate, config: ResolvedConfig, info: ModelInfo | None, settings) -> None:
    """Refuse a job whose estimated memory or calls exceed the operator's limits (`nograd.costs`)."""
    try:
        costs.check(config, info, costs.Limits.from_settings(settings), asked=frozenset(body.options.model_fields_set))
    except ConfigError as exc:
        raise Invalid(_location(exc.field), exc.message) from None


async def model_workers(body: JobCreate, queue, settings) -> list[dict] | None:
    """The live workers a job's model check needs (None for a remote endpoint's job, or the queue away): a configured
    model is accepted with Redis away (the store holds the job); another one needs a live worker serving it, so the
    queue must answer (503 at once when it does not)."""
    if body.endpoint is not None:
        return None
    return await (live_workers(queue) if body.model in settings.models else queue.workers())


async def validate_job(body: JobCreate, tenant: str, store, settings, workers: list[dict] | None) -> dict:
    """A submission checked as `POST /v1/jobs` checks it (model served, config resolved, costs admitted), as the
    `Store.create_job` arguments (without the tenant) of the job to queue. Raises `Invalid` naming the field.

    Args:
        workers: `model_workers(body, ...)` (the model's shape, and for a model not configured, whether any live
            worker serves it); the same list serves every job of one model.
    """
    if body.endpoint is None and body.model not in model_names(settings, workers):
        raise Invalid("model", f"model {body.model!r} is not served here; GET /v1/models lists the models")
    config, name = await asyncio.to_thread(_resolved, body, store, tenant, settings)
    _admit(body, config, _model_shape(workers, config.model), settings)
    return dict(
        method=body.method,
        task=name,
        dataset_id=body.dataset_id,
        model=config.model,
        config=config.to_dict(),
        budget=body.budget if METHODS[body.method].is_search else 0,
        init_from=body.init_from,
        name=body.name,
        tags=body.tags,
    )


@router.post("", status_code=201, response_model=JobPublic)
async def create_job(
    body: JobCreate, request: Request, tenant: CurrentTenant, store: StoreDep, queue: QueueDep, settings: SettingsDep
) -> dict:
    """Submit an optimization (or baseline) job."""
    await asyncio.to_thread(check_queued_quota, store, tenant, settings)
    job = await validate_job(body, tenant, store, settings, await model_workers(body, queue, settings))
    job = await asyncio.to_thread(store.create_job, tenant=tenant, **job)
    if request.app.state.runner is not None:
        request.app.state.runner.wake()
    return job


@router.get("", response_model=JobsPublic)
def list_jobs(
    tenant: CurrentTenant,
    store: StoreDep,
    status: Annotated[Status | None, Query()] = None,
    task: Annotated[str | None, Query()] = None,
    method: Annotated[str | None, Query()] = None,
    study_id: Annotated[str | None, Query(max_length=40, description="only the jobs of this study")] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN, description="only jobs that have this tag")] = None,
    name: Annotated[str | None, Query(max_length=200, description="only jobs with exactly this name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict:
    """List this tenant's jobs, newest first."""
    rows, count = store.list_jobs(
        tenant,
        status=None if status is None else status.value,
        task=task,
        method=method,
        study_id=study_id,
        tag=tag,
        name=name,
        limit=limit,
        offset=offset,
    )
    return {"data": rows, "count": count}


def _job_or_404(store, job_id: str, tenant: str) -> dict:
    job = store.get_job(job_id, tenant)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, tenant: CurrentTenant, store: StoreDep) -> dict:
    """One job: status, calls used / budget, best losses and metrics, timings."""
    return _job_or_404(store, job_id, tenant)


@router.get("/{job_id}/history", response_model=HistoryPublic)
def get_history(
    job_id: str, tenant: CurrentTenant, store: StoreDep, after: Annotated[int, Query(ge=-1, le=10**9)] = -1
) -> dict:
    """Per-generation records (losses of the population, best loss, dev metric, step size)."""
    _job_or_404(store, job_id, tenant)
    rows = store.history(job_id, after)
    return {"data": rows, "count": len(rows)}


@router.get("/{job_id}/analysis", response_model=AnalysisPublic)
def get_analysis(job_id: str, tenant: CurrentTenant, store: StoreDep) -> dict:
    """What the job learned: its prompt, test confusion matrices (tuned vs manual prompt), changed examples."""
    job = _job_or_404(store, job_id, tenant)
    analysis = store.analysis(job_id)
    if analysis is None:
        detail = (
            f"job {job_id} is {job['status']}; its analysis exists once it succeeded"
            if job["status"] != Status.succeeded.value
            else f"job {job_id} finished before this service stored analyses; rerun it to get one"
        )
        raise NotFound(detail)
    return {"job_id": job_id, **analysis}


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, tenant: CurrentTenant, store: StoreDep) -> dict:
    """Cancel a queued or running job (a running one stops within a few seconds)."""
    try:
        job = store.request_cancel(job_id, tenant)
    except JobStateError as exc:
        raise Conflict(str(exc)) from None
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


@router.get(
    "/{job_id}/prompt",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "prompt.safetensors"}},
)
def get_prompt(job_id: str, tenant: CurrentTenant, store: StoreDep) -> Response:
    """The tuned prompt as a safetensors file (z, projection spec, task spec, run config)."""
    job = _job_or_404(store, job_id, tenant)
    data = store.artifact(job_id)
    if data is None:
        raise Conflict(f"job {job_id} is {job['status']}; the prompt exists once it succeeded")
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.safetensors"'},
    )


@router.get(
    "/{job_id}/export",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "the export's files, zipped"}},
)
def export_job(
    job_id: str,
    tenant: CurrentTenant,
    store: StoreDep,
    format: Annotated[  # noqa: A002 - the query parameter's name
        Literal[FORMATS],  # type: ignore[valid-type]
        Query(description="peft: a PEFT prompt-tuning adapter (BBT); text; chat; native: the prompt file"),
    ],
) -> Response:
    """The tuned prompt in a format other tools load (`nograd.export`): a zip of the files `nograd export` writes."""
    job = _job_or_404(store, job_id, tenant)
    data = store.artifact(job_id)
    if data is None:
        raise Conflict(f"job {job_id} is {job['status']}; its prompt can be exported once it succeeded")
    try:
        files = export_files(data, format)
    except ExportError as exc:
        raise Invalid(exc.field, str(exc), location="query") from None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{format}.zip"'},
    )


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def job_events(
    job_id: str,
    tenant: CurrentTenant,
    store: StoreDep,
    streams: StreamsDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Live progress as server-sent events: `job` (snapshot on change), `generation` (each history record,
    id = generation; reconnect with Last-Event-ID to resume), `end` when the job is finished."""
    slot = streams.reserve(tenant)  # 429 past the tenant's stream quota, before any database work
    try:
        job = await asyncio.to_thread(_job_or_404, store, job_id, tenant)
    except BaseException:
        slot.release()
        raise
    try:
        after = int(last_event_id) if last_event_id is not None else -1
    except ValueError:
        after = -1
    return streams.response(job, after, slot)
