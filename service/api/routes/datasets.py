"""Datasets: upload a JSONL/CSV file (validated and split like `nograd run --dataset`: a held-out test split by the
same rule, or an uploaded test file), list them, delete them."""

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


def _validate(
    content: bytes, filename: str, options: dict, max_depth: int = 32, test: tuple[str, bytes] | None = None
) -> dict:
    """Loads the upload as `nograd run --dataset` would (with `test`, a (filename, content) test file, as
    --test-dataset); returns its summary. Raises Invalid naming the form field."""
    suffix = Path(filename).suffix.lower()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(content)
        names = {str(path): filename}
        test_path = None
        if test is not None:
            test_path = Path(tmp) / f"test-upload{Path(test[0]).suffix.lower()}"
            test_path.write_bytes(test[1])
            names[str(test_path)] = test[0]
        try:
            task = load_user_dataset(
                path, name=Path(filename).stem, max_depth=max_depth, test_path=test_path, **options
            )
        except TaskError as exc:
            message = str(exc)
            for tmp_name, name in names.items():
                message = message.replace(tmp_name, name)
            field = "test_file" if test_path is not None and str(test_path) in str(exc) else exc.field or "file"
            raise Invalid(field, message) from None
    return {
        "rows": len(task.pool) + len(task.test),
        "pool": len(task.pool),
        "test": len(task.test),
        "labels": list(task.labels),
        "per_label": task.pool_counts(),
        "test_per_label": {label: sum(e.label == label for e in task.test) for label in task.labels},
        "fields": list(task.fields),
        "test_fraction": task.test_fraction,
        "notes": list(task.notes),
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
    template: Annotated[
        str, Form(max_length=4000, description="e.g. '{text} It was {mask}.'", examples=["{text} It was {mask}."])
    ],
    verbalizer: Annotated[
        str,
        Form(max_length=4000, description="label:word pairs, e.g. 'neg:bad,pos:great'", examples=["neg:bad,pos:great"]),
    ],
    name: Annotated[str | None, Form(max_length=100)] = None,
    text_field: Annotated[str, Form(max_length=100)] = "text",
    text2_field: Annotated[str | None, Form(max_length=100)] = None,
    label_field: Annotated[str, Form(max_length=100)] = "label",
    metric: Annotated[str, Form(max_length=20)] = "accuracy",
    test_fraction: Annotated[
        float | None,
        Form(
            ge=0,
            lt=1,
            description="share of each label's rows held out as the test set (0: none); unset: 0.2 (at most 1000 "
            "rows) when every label keeps 8 rows for train and dev, as `nograd run --dataset` does",
        ),
    ] = None,
    test_file: Annotated[
        UploadFile | None,
        File(description="held-out test rows in the same format and fields (instead of test_fraction)"),
    ] = None,
) -> dict:
    """Upload a labelled dataset (and optionally its test file); it is checked (fields, labels, template,
    verbalizer, split) before it is stored. Jobs on it report the test metric on its held-out rows."""
    if test_file is not None and test_fraction:
        raise Invalid("test_fraction", "give either test_file or test_fraction, not both")
    filename, content = await _read_upload(file, "file", settings)
    test = None if test_file is None else await _read_upload(test_file, "test_file", settings)
    size = len(content) + (0 if test is None else len(test[1]))
    await asyncio.to_thread(_check_storage_quota, store, tenant, settings, size)
    options = {
        "template": template,
        "verbalizer": verbalizer,
        "text_field": text_field,
        "text2_field": text2_field or None,
        "label_field": label_field,
        "metric": metric,
    }
    if test is None:
        options["test_fraction"] = test_fraction
    summary = await asyncio.to_thread(_validate, content, filename, options, settings.max_json_depth, test)
    if test is None:  # decided once: every job on the dataset tests on the rows the summary counts
        options["test_fraction"] = summary["test_fraction"]
    return await asyncio.to_thread(
        store.create_dataset,
        tenant=tenant,
        name=name or Path(filename).stem,
        filename=filename,
        options=options,
        summary=summary,
        content=content,
        test_filename=None if test is None else test[0],
        test_content=None if test is None else test[1],
    )


async def _read_upload(upload: UploadFile, field: str, settings) -> tuple[str, bytes]:
    """(file name, content) of an uploaded file; 422 naming `field` for a type we do not read, 413 over the limit."""
    limit = int(settings.max_upload_mb * 1024 * 1024)
    filename = Path(upload.filename or "data.jsonl").name
    if Path(filename).suffix.lower() not in SUFFIXES:
        raise Invalid(field, f"{filename}: use a .jsonl, .json or .csv file")
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise TooLarge(
            f"{field} is larger than {settings.max_upload_mb:g} MB; split it or ask the operator to raise "
            "NOGRAD_MAX_UPLOAD_MB"
        )
    return filename, content


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
