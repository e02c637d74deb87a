"""The Python SDK of the nograd REST API: `Client` (synchronous) and `AsyncClient` (asyncio), both on httpx.

Results are small pydantic models (`Job`, `JobList`, `Study`, `StudyCell`, `MetricSummary`) that keep any field a
newer service adds; history records, datasets and the catalog are plain dicts. Errors: `ApiError` (the service's
status and detail), `ApiConnectionError` (no answer; names the URL), `StreamLost`, and `WaitTimeout` (a
`TimeoutError`) from `wait`. The SDK imports httpx, pydantic and the standard library only: no numpy, no torch,
nothing of `nograd.service` (a client machine needs none of them).

Example:
    >>> import nograd
    >>> with nograd.Client("http://127.0.0.1:8000", api_key="ng_...") as api:
    ...     job = api.submit(method="bbt", task="mr", budget=200)
    ...     done = api.wait(job.id, on_progress=lambda j: print(f"{j.calls}/{j.budget}", j.best_dev_metric))
    ...     print(done.status, done.test_metric)
    ...     files = api.export(done.id, "peft", "adapter/")
"""

from .async_client import AsyncClient
from .client import Client
from .errors import ApiConnectionError, ApiError, ApiTimeoutError, StreamLost, WaitTimeout
from .models import TERMINAL, Event, Job, JobList, MetricSummary, Resource, Study, StudyCell, StudyList

__all__ = [
    "TERMINAL",
    "ApiConnectionError",
    "ApiError",
    "ApiTimeoutError",
    "AsyncClient",
    "Client",
    "Event",
    "Job",
    "JobList",
    "MetricSummary",
    "Resource",
    "Study",
    "StudyCell",
    "StudyList",
    "StreamLost",
    "WaitTimeout",
]
