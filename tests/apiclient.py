"""A tenant's view of the in-process API in tests: requests with its key, submit, wait, follow events."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


class Api:
    """`api(method, path, tenant="alice", **kw)` sends with that tenant's key (`tenant=None`: no key); `job` holds
    the submissions' defaults."""

    def __init__(self, client: TestClient, keys: dict[str, str], job: dict | None = None):
        self.client, self.keys, self.job = client, keys, dict(job or {})

    @property
    def store(self):
        return self.client.app.state.store

    def __call__(self, method: str, path: str, tenant: str | None = "alice", **kw):
        headers = kw.pop("headers", {})
        if tenant is not None:
            headers["Authorization"] = f"Bearer {self.keys[tenant]}"
        return self.client.request(method, path, headers=headers, **kw)

    def stream(self, job_id: str, tenant: str = "alice", **headers):
        headers["Authorization"] = f"Bearer {self.keys[tenant]}"
        return self.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers)

    def submit(self, tenant: str = "alice", **job) -> dict:
        response = self("POST", "/v1/jobs", tenant, json={**self.job, **job})
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, job_id: str, tenant: str = "alice", timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self("GET", f"/v1/jobs/{job_id}", tenant).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.05)
        raise TimeoutError(job_id)
