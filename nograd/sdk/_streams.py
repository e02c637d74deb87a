"""Following a job without I/O of its own (both clients drive these): the server-sent-events decoder, the
reconnection policy of `events()`, and the deadline and change detection of `wait()`.

The service's stream (`GET /v1/jobs/{id}/events`, service/api/streams.py) sends `generation` events with
`id: <generation>`, `job` snapshots, a final `end`, and `: ping` comments every 15 s. It may end early, with a comment
saying so (the service is shutting down, or the client read too slowly): the follower then reconnects with the
`Last-Event-ID` of the last event it saw, and the service replays only what came after it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from .errors import ApiError, StreamLost, WaitTimeout
from .models import Event, Job, Study

STREAM_IDLE = 45.0  # seconds without a byte (three of the service's pings) after which a stream counts as dropped
RETRYABLE = frozenset({502, 503, 504})  # answers to opening a stream that a retry may cure
MAX_DELAY = 8.0  # the longest wait between two reconnections


class SSEDecoder:
    """Turns a stream's lines into `Event`s, per the WHATWG event-stream rules our server needs: `event`, `data`
    (lines joined by newlines, JSON-decoded), `id` (kept in `last_id`), comments (the last one kept in `comment`).
    One decoder per connection."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.comment: str | None = None
        self._event, self._data, self._id = "", [], None

    def feed(self, line: str) -> Event | None:
        """The event `line` completes (a blank line after data), else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comment = line[1:].strip() or self.comment
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # `retry` and unknown fields: ignored

    def _dispatch(self) -> Event | None:
        event, data, event_id = self._event or "message", self._data, self._id
        self._event, self._data, self._id = "", [], None
        if event_id is not None:
            self.last_id = event_id
        if not data:
            return None
        text = "\n".join(data)
        try:
            return Event(event, json.loads(text))
        except ValueError:
            raise ApiError(
                200, f"the event stream sent a {event!r} event whose data is not JSON: {text[:200]!r}"
            ) from None


class EventFollower:
    """The state of one `events()` iteration over its connections: the last event id seen, consecutive failures,
    whether the job's `end` arrived.

    Args:
        url: the service (named in errors).
        job_id: the job followed.
        last_event_id: resume after this generation (None: from the start).
        retries: consecutive failed connections (none delivering more than its opening snapshot) tolerated before
            `StreamLost`.
        delay: seconds before the first reconnection; doubled after each failure in a row, up to MAX_DELAY.
    """

    def __init__(self, url: str, job_id: str, last_event_id: int | str | None, *, retries: int, delay: float):
        self.url, self.job_id, self.retries, self.delay = url, job_id, retries, delay
        self.last_id = None if last_event_id is None else str(last_event_id)
        self.failures, self.ended = 0, False
        self._received = 0  # events on the current connection

    def connected(self) -> None:
        """A new connection delivers the stream."""
        self._received = 0

    def headers(self) -> dict[str, str]:
        """The next connection's headers: `Last-Event-ID` once an event id is known."""
        return {} if self.last_id is None else {"Last-Event-ID": self.last_id}

    def accept(self, response: httpx.Response) -> float | None:
        """Judges the answer to opening the stream (a >= 400 one with its body read): None to read it as the stream;
        else the seconds to wait before retrying (502/503/504, a failure); other errors raise `ApiError` (a 429,
        the tenant's stream quota, too: retrying would not free a slot)."""
        if response.status_code < 400:
            kind = response.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                raise ApiError(
                    response.status_code,
                    f"GET {response.request.url.path} answered {kind or 'no content type'}, not an event stream; "
                    f"is {self.url} a nograd service (behind a proxy that rewrites it)?",
                )
            return None
        error = ApiError.from_response(response)
        if response.status_code not in RETRYABLE:
            raise error
        delay = self.dropped(str(error))
        try:
            return max(delay, min(float(response.headers.get("Retry-After", 0)), 30.0))
        except ValueError:
            return delay

    def seen(self, event: Event, last_id: str | None) -> None:
        """An event arrived (`last_id`: the stream's last event id so far). Anything past the snapshot every
        connection starts with is progress: the failures in a row start again from zero."""
        self._received += 1
        if event.event != "job" or self._received > 1:
            self.failures = 0
        if last_id is not None:
            self.last_id = last_id
        if event.event == "end":
            self.ended = True

    def dropped(self, reason: str) -> float:
        """A connection failed or ended before the job's `end`: the seconds to wait before the next one. Raises
        `StreamLost` past `retries` failures in a row."""
        self.failures += 1
        if self.failures > self.retries:
            raise StreamLost(self.url, self.job_id, self.failures, reason)
        return min(self.delay * 2 ** (self.failures - 1), MAX_DELAY)


def ended_early(decoder: SSEDecoder) -> str:
    """Why a stream that closed before the job's end did (the server's last comment says, when it does)."""
    if decoder.comment and decoder.comment != "ping":
        return f"the service closed the stream: {decoder.comment}"
    return "the stream closed before the job's end event"


def stream_timeout(timeout: httpx.Timeout, deadline: Deadline | None) -> httpx.Timeout:
    """The client's timeouts with the read timeout of a stream: STREAM_IDLE, or less when a deadline is nearer."""
    read = STREAM_IDLE
    remaining = None if deadline is None else deadline.remaining()
    if remaining is not None:
        read = max(0.01, min(read, remaining))
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


class Deadline:
    """`wait`'s clock and the last state it saw (named in its `WaitTimeout`).

    Args:
        timeout: seconds (None: no deadline).
        what: the thing waited for, e.g. "job job_abc".
    """

    def __init__(self, timeout: float | None, what: str):
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0 or None (got {timeout!r})")
        self.timeout, self.what = timeout, what
        self._at = None if timeout is None else time.monotonic() + timeout
        self.last: Any = None
        self.state = "it has not finished"
        self._key: tuple | None = None

    def remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def check(self) -> None:
        """Raises `WaitTimeout` once the deadline has passed."""
        if self._at is not None and time.monotonic() >= self._at:
            raise self.error()

    def error(self) -> WaitTimeout:
        return WaitTimeout(self.what, self.timeout or 0.0, self.last, self.state)

    def pause(self, seconds: float) -> float:
        """`seconds`, or less if the deadline comes sooner."""
        remaining = self.remaining()
        return seconds if remaining is None else min(seconds, remaining)

    def saw(self, last: Job | Study) -> bool:
        """Records the newest state of the job or study; True when it changed since the last one (on_progress is
        then due)."""
        self.last = last
        if isinstance(last, Job):
            key = (last.status, last.calls, last.generation, last.updated_at)
            self.state = f"it is {last.status}" + (f" at {last.calls}/{last.budget} calls" if last.budget else "")
        else:
            key = (last.done, tuple(sorted(last.counts.items())))
            self.state = f"{last.n_done} of {last.n_jobs} jobs have ended"
        changed, self._key = key != self._key, key
        return changed
