"""Studies: a sweep of jobs submitted at once (every combination of the swept values, once per seed), listed,
summarized (status counts, per-cell mean and std of the metrics) and cancelled together."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from .. import sweeps
from ..deps import CurrentTenant, QueueDep, SettingsDep, StoreDep
from ..errors import Invalid, NotFound
from ..schemas import JobCreate, StudiesPublic, StudyCreate, StudyPublic
from .jobs import check_queued_quota, model_workers, validate_job

router = APIRouter(prefix="/v1/studies", tags=["studies"])


@router.post("", status_code=201, response_model=StudyPublic)
async def create_study(
    body: StudyCreate, request: Request, tenant: CurrentTenant, store: StoreDep, queue: QueueDep, settings: SettingsDep
) -> dict:
    """Submit a study: each combination of the swept values runs once per seed; all jobs are queued, or none."""
    sweeps.check_sweep(body.sweep)
    largest = min(settings.max_study_jobs, settings.tenant_queued_jobs)
    size = sweeps.check_size(
        body.sweep,
        largest,
        f"max_study_jobs, NOGRAD_MAX_STUDY_JOBS={settings.max_study_jobs}; tenant_queued_jobs, "
        f"NOGRAD_TENANT_QUEUED_JOBS={settings.tenant_queued_jobs}",
    )
    await asyncio.to_thread(check_queued_quota, store, tenant, settings, size)
    cells, planned = sweeps.expand(body.name or "study", body.base, body.sweep)
    validated = await _validated(planned, tenant, store, queue, settings)
    study, jobs = await asyncio.to_thread(
        store.create_study,
        tenant=tenant,
        name=body.name,
        base=body.base,
        sweep=body.sweep,
        cells=[
            {
                "key": cell.key,
                "params": cell.params,
                "seeds": cell.seeds,
                "jobs": [job for job, plan in zip(validated, planned) if plan.cell == index],
            }
            for index, cell in enumerate(cells)
        ],
    )
    if request.app.state.runner is not None:
        request.app.state.runner.wake()
    return sweeps.summary(study, jobs)


async def _validated(planned: list[sweeps.PlannedJob], tenant: str, store, queue, settings) -> list[dict]:
    """Every job checked as `POST /v1/jobs` checks one (`validate_job`), as `Store.create_job` arguments; the first
    error is a 422 naming the swept value (`sweep.<key>[i]`) or the base's field (`base.<field>`) that caused it."""
    workers: dict[str, list[dict] | None] = {}  # model -> its workers, asked once per model
    out = []
    for plan in planned:
        try:
            job = JobCreate.model_validate(plan.body)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise Invalid(plan.locate(".".join(str(p) for p in error["loc"])), error["msg"]) from None
        model = job.model if job.endpoint is None else ""
        if model not in workers:
            workers[model] = await model_workers(job, queue, settings)
        try:
            out.append(await validate_job(job, tenant, store, settings, workers[model]))
        except Invalid as exc:
            raise Invalid(plan.locate(exc.field), exc.message) from None
    return out


@router.get("", response_model=StudiesPublic)
def list_studies(
    tenant: CurrentTenant,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict:
    """List this tenant's studies, newest first, each with its summary."""
    rows, count = store.list_studies(tenant, limit=limit, offset=offset)
    jobs: dict[str, list[dict]] = {row["id"]: [] for row in rows}
    for job in store.study_jobs(list(jobs)):
        jobs[job["study_id"]].append(job)
    return {"data": [sweeps.summary(row, jobs[row["id"]]) for row in rows], "count": count}


def _study_or_404(store, study_id: str, tenant: str) -> dict:
    study = store.get_study(study_id, tenant)
    if study is None:
        raise NotFound(f"study {study_id} not found")
    return study


@router.get("/{study_id}", response_model=StudyPublic)
def get_study(study_id: str, tenant: CurrentTenant, store: StoreDep) -> dict:
    """One study: its jobs by status and, per cell, mean ± std of the dev and test metrics of its succeeded jobs."""
    study = _study_or_404(store, study_id, tenant)
    return sweeps.summary(study, store.study_jobs([study_id]))


@router.post("/{study_id}/cancel", response_model=StudyPublic)
def cancel_study(study_id: str, tenant: CurrentTenant, store: StoreDep) -> dict:
    """Cancel every job of the study that has not ended (running ones stop within a few seconds)."""
    if store.cancel_study(study_id, tenant) is None:
        raise NotFound(f"study {study_id} not found")
    return sweeps.summary(_study_or_404(store, study_id, tenant), store.study_jobs([study_id]))
