"""Datasets: upload a JSONL/CSV file (validated like `nograd run --dataset`), list them, delete them."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile

from nograd.tasks import TaskError, load_user_dataset

from ...store import JobStateError
from ..deps import CurrentTenant, SettingsDep, StoreDep
from ..errors import Conflict, Invalid, NotFound, TooLarge, TooMany
from ..schemas import DatasetPublic, DatasetsPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

SUFFIXES = (".jsonl", ".json", ".csv")


def _validate(content: bytes, filename: str, options: dict, max_depth: int = 32) -> dict:
    suffix = Path(filename).suffix.lower()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            task = load_user_dataset(path, name=Path(filename).stem, max_depth=max_depth, **options)
        except TaskError as exc:
            raise Invalid(exc.field or "file", str(exc).replace(str(path), filename)) from None
    counts = {label: sum(e.label == label for e in task.pool) for label in task.labels}
    return {
        "rows": len(task.pool) + len(task.test),
        "pool": len(task.pool),
        "test": len(task.test),
        "labels": list(task.labels),
        "per_label": counts,
        "fields": list(task.fields),
    }


def _check_storage_quota(store, tenant: str, settings, size: int) -> None:
    """429 when this upload would take the tenant's stored datasets past `tenant_storage_mb` (no Retry-After:
    waiting does not help, deleting does). Concurrent uploads may pass the check together and go a little over."""
    used, quota = store.dataset_bytes(tenant), settings.tenant_storage_mb * 1024 * 1024
    if used + size > quota:
        raise TooMany(
            f"dataset storage quota: your datasets hold {used / 2**20:.1f} MB and this file is {size / 2**20:.1f} "
            f"MB, more than the {settings.tenant_storage_mb:g} MB a tenant may store (tenant_storage_mb, "
            "NOGRAD_TENANT_STORAGE_MB); delete datasets you no longer need with DELETE /v1/datasets/{id}"
        )


@router.post("", status_code=201, response_model=DatasetPublic)
async def upload_dataset(
    request: Request,
    tenant: CurrentTenant,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL or CSV, one example per row")],
    template: Annotated[str, Form(max_length=4000, description="e.g. '{text} It was {mask}.'")],
    verbalizer: Annotated[str, Form(max_length=4000, description="label:word pairs, e.g. 'neg:bad,pos:great'")],
    name: Annotated[str | None, Form(max_length=100)] = None,
    text_field: Annotated[str, Form(max_length=100)] = "text",
    text2_field: Annotated[str | None, Form(max_length=100)] = None,
    label_field: Annotated[str, Form(max_length=100)] = "label",
    metric: Annotated[str, Form(max_length=20)] = "accuracy",
) -> dict:
    """Upload a labelled dataset; it is checked (fields, labels, template, verbalizer) before it is stored."""
    limit = int(settings.max_upload_mb * 1024 * 1024)
    filename = Path(file.filename or "data.jsonl").name
    if Path(filename).suffix.lower() not in SUFFIXES:
        raise Invalid("file", f"{filename}: use a .jsonl, .json or .csv file")
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise TooLarge(
            f"file is larger than {settings.max_upload_mb:g} MB; split it or ask the operator to raise "
            "NOGRAD_MAX_UPLOAD_MB"
        )
    await asyncio.to_thread(_check_storage_quota, store, tenant, settings, len(content))
    options = {
        "template": template,
        "verbalizer": verbalizer,
        "text_field": text_field,
        "text2_field": text2_field or None,
        "label_field": label_field,
        "metric": metric,
    }
    summary = await asyncio.to_thread(_validate, content, filename, options, settings.max_json_depth)
    return await asyncio.to_thread(
        store.create_dataset,
        tenant=tenant,
        name=name or Path(filename).stem,
        filename=filename,
        options=options,
        summary=summary,
        content=content,
    )


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    tenant: CurrentTenant,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict:
    """This tenant's datasets."""
    rows, count = store.list_datasets(tenant, limit=limit, offset=offset)
    return {"data": rows, "count": count}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, tenant: CurrentTenant, store: StoreDep) -> dict:
    """One dataset's summary."""
    dataset = store.get_dataset(dataset_id, tenant)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


@router.delete("/{dataset_id}", status_code=204, response_class=Response)
def delete_dataset(dataset_id: str, tenant: CurrentTenant, store: StoreDep, settings: SettingsDep) -> Response:
    """Delete a dataset (refused while a queued or running job uses it; finished jobs keep their results)."""
    try:
        deleted = store.delete_dataset(dataset_id, tenant)
    except JobStateError as exc:
        raise Conflict(str(exc)) from None
    if not deleted:
        raise NotFound(f"dataset {dataset_id} not found")
    for copy in (Path(settings.data_dir) / "datasets").glob(f"{dataset_id}-*"):  # this replica's file of it
        copy.unlink(missing_ok=True)
    return Response(status_code=204)
