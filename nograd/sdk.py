"""A small Python client for the nograd REST API (httpx).

Example:
    >>> from nograd.sdk import Client
    >>> with Client("http://127.0.0.1:8000", api_key="ng_...") as api:
    ...     job = api.submit(method="bbt", task="mr", budget=200)
    ...     for event, data in api.events(job["id"]):
    ...         print(event, data.get("calls"))
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


class ApiError(RuntimeError):
    """The API answered with an error; `status` is the HTTP status, the message is the server's detail."""

    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        if isinstance(detail, list):
            text = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
        else:
            text = str(detail)
        super().__init__(f"HTTP {status}: {text}")


class Client:
    """Args:
    url: the service's base URL (default $NOGRAD_URL or http://127.0.0.1:8000).
    api_key: bearer key (default $NOGRAD_API_KEY); never printed.
    timeout: seconds per request (the events stream has no read timeout).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = (url or os.environ.get("NOGRAD_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key if api_key is not None else os.environ.get("NOGRAD_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    # jobs
    def submit(self, **job: Any) -> dict:
        """POST /v1/jobs; keyword arguments are JobCreate's fields (options as a dict)."""
        return self._json(self._http.post("/v1/jobs", json=job))

    def put_secret(self, name: str, value: str) -> dict:
        """POST /v1/secrets: store a remote API key under `name` (write-only)."""
        return self._json(self._http.post("/v1/secrets", json={"name": name, "value": value}))

    def job(self, job_id: str) -> dict:
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def jobs(self, **filters: Any) -> dict:
        return self._json(self._http.get("/v1/jobs", params={k: v for k, v in filters.items() if v is not None}))

    def history(self, job_id: str, after: int = -1) -> list[dict]:
        return self._json(self._http.get(f"/v1/jobs/{job_id}/history", params={"after": after}))["data"]

    def cancel(self, job_id: str) -> dict:
        return self._json(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def prompt(self, job_id: str, path: str | Path | None = None) -> bytes:
        response = self._http.get(f"/v1/jobs/{job_id}/prompt")
        if response.status_code >= 400:
            self._json(response)
        if path is not None:
            Path(path).write_bytes(response.content)
        return response.content

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[tuple[str, dict]]:
        """(event, data) pairs from the job's server-sent events until it ends."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        with self._http.stream(
            "GET",
            f"/v1/jobs/{job_id}/events",
            headers=headers,
            timeout=httpx.Timeout(self._http.timeout.connect, read=None),
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            event, data = "message", []
            for line in response.iter_lines():
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    # datasets and catalog
    def upload(self, path: str | Path, *, template: str, verbalizer: str, **options: Any) -> dict:
        path = Path(path)
        with open(path, "rb") as fh:
            form = {
                "template": template,
                "verbalizer": verbalizer,
                **{k: str(v) for k, v in options.items() if v is not None},
            }
            return self._json(self._http.post("/v1/datasets", data=form, files={"file": (path.name, fh)}))

    def datasets(self) -> dict:
        return self._json(self._http.get("/v1/datasets"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (refused with 409 while a queued or running job uses it)."""
        response = self._http.delete(f"/v1/datasets/{dataset_id}")
        if response.status_code >= 400:
            self._json(response)

    def tasks(self) -> list[dict]:
        return self._json(self._http.get("/v1/tasks"))

    def models(self) -> list[dict]:
        return self._json(self._http.get("/v1/models"))

    def workers(self) -> list[dict]:
        return self._json(self._http.get("/v1/workers"))

    def health(self) -> dict:
        return self._json(self._http.get("/healthz"))
