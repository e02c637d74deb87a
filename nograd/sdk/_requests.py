"""The REST calls both clients make, as data: each public method builds a `Call` here and only sends it (with
httpx.Client or httpx.AsyncClient), so the sync and async clients cannot drift apart."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .errors import ApiError
from .models import Job, JobList, Study, StudyList

DEFAULT_URL = "http://127.0.0.1:8000"


def base_url(url: str | None) -> str:
    """`url` (else $NOGRAD_URL, else the default) without its trailing slash. Raises ValueError, naming the URL and
    the fix, for one httpx cannot send to (no http:// or https://, no host)."""
    url = (url or os.environ.get("NOGRAD_URL") or DEFAULT_URL).rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"url {url!r} is not a URL ({exc}); write it like {DEFAULT_URL}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"url {url!r}: write it with http:// or https:// and a host, e.g. {DEFAULT_URL}")
    return url


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer header for `api_key` (else $NOGRAD_API_KEY); none for an empty key (a service without auth)."""
    key = api_key if api_key is not None else os.environ.get("NOGRAD_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def checked(response: httpx.Response) -> httpx.Response:
    """`response` if it is a success (its body read); raises `ApiError` with the server's detail otherwise."""
    if response.status_code >= 400:
        raise ApiError.from_response(response)
    return response


def _json(response: httpx.Response) -> Any:
    return checked(response).json()


def _nothing(response: httpx.Response) -> None:
    checked(response)


def _content(response: httpx.Response) -> bytes:
    return checked(response).content


def _as(model: type) -> Callable[[httpx.Response], Any]:
    return lambda response: model.model_validate(_json(response))


@dataclass(frozen=True)
class Call:
    """One request and how to read its answer (`parse` raises `ApiError` for an error status)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any] = _json
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, Any] | None = field(default=None, compare=False)


def _id(value: str) -> str:
    """A path segment: an id with a `/` or `?` in it cannot reach another route."""
    return quote(str(value), safe="")


def _given(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


# ---------------------------------------------------------------- jobs
def submit(job: dict[str, Any]) -> Call:
    return Call("POST", "/v1/jobs", _as(Job), json=job)


def job(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{_id(job_id)}", _as(Job))


def jobs(filters: dict[str, Any]) -> Call:
    return Call("GET", "/v1/jobs", _as(JobList), params=_given(filters))


def history(job_id: str, after: int) -> Call:
    return Call("GET", f"/v1/jobs/{_id(job_id)}/history", lambda r: _json(r)["data"], params={"after": after})


def cancel(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{_id(job_id)}/cancel", _as(Job))


def prompt(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{_id(job_id)}/prompt", _content)


def analysis(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{_id(job_id)}/analysis")


def export_path(job_id: str) -> str:
    return f"/v1/jobs/{_id(job_id)}/export"


def events_path(job_id: str) -> str:
    return f"/v1/jobs/{_id(job_id)}/events"


# ---------------------------------------------------------------- studies
def submit_study(base: dict[str, Any], sweep: dict[str, list[Any]], name: str | None) -> Call:
    return Call("POST", "/v1/studies", _as(Study), json={"name": name, "base": base, "sweep": sweep})


def study(study_id: str) -> Call:
    return Call("GET", f"/v1/studies/{_id(study_id)}", _as(Study))


def studies() -> Call:
    return Call("GET", "/v1/studies", _as(StudyList))


def cancel_study(study_id: str) -> Call:
    return Call("POST", f"/v1/studies/{_id(study_id)}/cancel", _as(Study))


# ---------------------------------------------------------------- datasets, secrets and the catalog
def upload(form: dict[str, Any], files: dict[str, Any]) -> Call:
    data = {k: str(v) for k, v in form.items() if v is not None}
    return Call("POST", "/v1/datasets", data=data, files=files)


def datasets() -> Call:
    return Call("GET", "/v1/datasets")


def dataset(dataset_id: str) -> Call:
    return Call("GET", f"/v1/datasets/{_id(dataset_id)}")


def delete_dataset(dataset_id: str) -> Call:
    return Call("DELETE", f"/v1/datasets/{_id(dataset_id)}", _nothing)


def put_secret(name: str, value: str) -> Call:
    return Call("POST", "/v1/secrets", json={"name": name, "value": value})


def catalog(path: str) -> Call:
    """GET of one of the catalog's lists (`/v1/tasks`, `/v1/methods`, `/v1/models`, `/v1/workers`) or `/healthz`."""
    return Call("GET", path)
