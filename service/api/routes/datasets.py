"""Datasets: upload a JSONL/CSV file (validated like `nograd run --dataset`), list them."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from nograd.tasks import TaskError, load_user_dataset

from ..deps import CurrentTenant, SettingsDep, StoreDep
from ..errors import Invalid, NotFound, TooLarge
from ..schemas import DatasetPublic, DatasetsPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

SUFFIXES = (".jsonl", ".json", ".csv")


def _validate(content: bytes, filename: str, options: dict) -> dict:
    suffix = Path(filename).suffix.lower()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            task = load_user_dataset(path, name=Path(filename).stem, **options)
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
    options = {
        "template": template,
        "verbalizer": verbalizer,
        "text_field": text_field,
        "text2_field": text2_field or None,
        "label_field": label_field,
        "metric": metric,
    }
    summary = await asyncio.to_thread(_validate, content, filename, options)
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
