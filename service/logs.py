"""Service logs: one line per record on stderr, as text or as JSON (`NOGRAD_LOG_FORMAT`), carrying the request,
tenant and job they belong to.

The context lives in one `contextvars.ContextVar` holding a small dict of fields. Whoever starts a unit of work
binds fresh fields for it (`bound`): the API's request middleware a `request_id` per request, the job executor a
`job_id` and `tenant` per job task, a worker the `job_id` of the batch in progress. Asyncio tasks and
`asyncio.to_thread` copy the context, so every line logged on the work's behalf carries its fields. `annotate` adds
a field to the fields already bound, in place: the request's tenant is only known once a dependency (which FastAPI
may run in a thread, on a copy of the context) has checked the key, and the copy shares the dict.

Keys never reach a log line: both formatters redact bearer tokens and nograd API keys (`ng_<id>_<secret>` keeps
only its id) in the message and in exception text, whatever the code that logged them did.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

#: What `NOGRAD_LOG_FORMAT` may be.
FORMATS = ("text", "json")
#: The context fields a JSON line carries when they are known, in this order.
CONTEXT_FIELDS = ("request_id", "tenant", "job_id")
#: Attributes a record may carry through `extra=` that a JSON line includes (the access line's request facts).
EXTRA_FIELDS = ("client", "method", "path", "route", "status", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar("nograd_log_fields", default=None)

_SECRETS = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), r"\1 [redacted]"),
    (re.compile(r"\b(ng_[0-9a-f]{12})_[A-Za-z0-9_-]+"), r"\1_[redacted]"),
)


def redact(text: str) -> str:
    """`text` with bearer tokens and nograd API keys replaced by `[redacted]` (a key keeps its id, which is no
    secret and names the key in `nograd keys list`)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def current() -> dict:
    """The context fields bound here (a copy)."""
    return dict(_fields.get() or {})


@contextmanager
def bound(**fields) -> Iterator[dict]:
    """Bind `fields` (on top of those already bound, in a new dict) for the block; yields that dict."""
    values = {**(_fields.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _fields.set(values)
    try:
        yield values
    finally:
        _fields.reset(token)


def bind(**fields) -> None:
    """Bind `fields` for the rest of the current context: for a task that owns its context (an asyncio task
    started for one job), where no block delimits the work."""
    _fields.set({**(_fields.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def annotate(**fields) -> None:
    """Add `fields` to the dict already bound, in place, so the code that bound it (and its other copies of the
    context) sees them too; binds them when nothing is bound."""
    values = _fields.get()
    if values is None:
        bind(**fields)
    else:
        values.update({k: v for k, v in fields.items() if v is not None})


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, redacted."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `time` (ISO 8601, UTC, milliseconds), `level`, `logger`, `message`, the
    context fields that are bound (`request_id`, `tenant`, `job_id`), the `EXTRA_FIELDS` a record carries, and
    `exception` (the formatted traceback) for a record logged with `exc_info`. Messages and tracebacks are
    redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = _fields.get() or {}
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value is not None:
                line[name] = value
        for name in EXTRA_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of `log_format` (`FORMATS`)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)} (got {log_format!r}); set NOGRAD_LOG_FORMAT")


def configure(log_format: str = "text", level: int = logging.INFO) -> logging.Handler:
    """Route every logger (uvicorn's too, when it runs with `log_config=None`) to one stderr handler in
    `log_format`, replacing the root logger's handlers: what a service process does once, at start. Python
    warnings (a library's deprecation, an optimizer restored up to rounding) go through it too, as lines of the
    `py.warnings` logger, so a JSON log stays JSON. Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    return handler
