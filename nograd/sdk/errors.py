"""The SDK's errors: one base, `ApiError`, for everything the service (or the way to it) refuses.

`ApiError` carries the HTTP status and the server's `detail`; `ApiConnectionError` (also a `ConnectionError`) is
raised when no answer came at all, naming the URL; `StreamLost` when a job's event stream kept dropping;
`WaitTimeout` (a `TimeoutError`, not an `ApiError`: the service did nothing wrong) when `wait` ran out of time.
"""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(RuntimeError):
    """The API answered with an error; `status` is the HTTP status, the message is the server's detail.

    A 422's detail is FastAPI's list of errors; the message joins them as `field.path: message`."""

    def __init__(self, status: int | None, detail: Any):
        self.status, self.detail = status, detail
        if isinstance(detail, list):
            text = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                for d in detail
            )
        else:
            text = str(detail)
        super().__init__(text if status is None else f"HTTP {status}: {text}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error a >= 400 response stands for (its body read); `detail` is the JSON body's, else its text."""
        try:
            body = response.json()
            detail = body.get("detail", response.text) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text or response.reason_phrase
        return cls(response.status_code, detail)


class ApiConnectionError(ApiError, ConnectionError):
    """No answer from the service at `url`: refused, unreachable, cut off, or too slow (`ApiTimeoutError`).

    `reason` is the innermost cause in words ("Connection refused"); `connected` tells whether a connection was
    made at all (False: nothing listens there, or the host is unknown). The httpx error is the `__cause__`."""

    def __init__(self, url: str, reason: str, *, connected: bool, message: str | None = None):
        self.url, self.reason, self.connected = url, reason, connected
        if message is None:
            if connected:
                message = f"lost the connection to the nograd service at {url} ({reason})"
            else:
                message = f"cannot reach the nograd service at {url} ({reason})"
        super().__init__(None, message)

    @classmethod
    def from_transport(cls, exc: httpx.TransportError, url: str) -> ApiConnectionError:
        """The SDK's error for an httpx transport error on a request to `url` (raise it `from exc`)."""
        if isinstance(exc, httpx.TimeoutException):
            connected = not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
            return ApiTimeoutError(url, reason_of(exc), connected=connected)
        return cls(url, reason_of(exc), connected=not isinstance(exc, httpx.ConnectError))


class ApiTimeoutError(ApiConnectionError, TimeoutError):
    """The service at `url` did not answer within the client's `timeout`."""

    def __init__(self, url: str, reason: str, *, connected: bool):
        super().__init__(
            url, reason, connected=connected, message=f"the nograd service at {url} did not answer in time ({reason})"
        )


class StreamLost(ApiConnectionError):
    """A job's event stream dropped `attempts` times in a row without a single event in between."""

    def __init__(self, url: str, job_id: str, attempts: int, reason: str):
        self.job_id, self.attempts = job_id, attempts
        super().__init__(
            url,
            reason,
            connected=True,
            message=f"the event stream of job {job_id} at {url} dropped {attempts} times in a row (last: {reason}); "
            f"poll GET /v1/jobs/{job_id} instead, or call wait(), which does",
        )


class WaitTimeout(TimeoutError):
    """`wait` / `wait_study` gave up: the job (or study) had not finished within `timeout` seconds.

    `last` is its last state seen (a `Job` or a `Study`); it goes on running on the service."""

    def __init__(self, what: str, timeout: float, last: Any, state: str):
        self.timeout, self.last = timeout, last
        super().__init__(
            f"{what} did not finish within {timeout:g} s ({state}); wait again with a longer timeout, or cancel it"
        )


def reason_of(exc: BaseException) -> str:
    """The innermost OS-level cause in words ("Connection refused"), else the exception's own text."""
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc) or type(exc).__name__
