"""Structured logs (`nograd.service.logs`, `api.telemetry`): JSON lines with the request, tenant and job they
belong to, request ids from `X-Request-ID`, and no key or secret in any line, whatever the level."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import httpx
import pytest
from apiclient import Api
from procs import create_key, free_port, serve
from test_api import FAST, make_api

from nograd.service import logs
from nograd.service.api.telemetry import request_id


@pytest.fixture
def json_lines():
    """Everything logged at any level while the test runs, through the JSON formatter; call it for the lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def api(tmp_path):
    client, _ = make_api(tmp_path)
    with client:
        store = client.app.state.store
        client.app.state.events_poll = 0.05
        yield Api(client, {"alice": store.create_key("alice")}, FAST)


def _record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("nograd.test", logging.WARNING, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    return record


# ------------------------------------------------------------------ the formatter
def test_a_json_line_has_time_level_logger_message_and_the_bound_context():
    with logs.bound(request_id="r1"), logs.bound(job_id="job_1"):
        logs.annotate(tenant="alice")
        line = json.loads(logs.JsonFormatter().format(_record("took %d ms", 12, status=200)))
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "nograd.test", "took 12 ms")
    assert (line["request_id"], line["job_id"], line["tenant"], line["status"]) == ("r1", "job_1", "alice", 200)
    assert logs.current() == {}  # the blocks ended: nothing stays bound
    assert "request_id" not in json.loads(logs.JsonFormatter().format(_record("outside")))


def test_a_json_line_carries_the_exception_of_exc_info():
    try:
        raise RuntimeError("the model went away")
    except RuntimeError:
        line = json.loads(logs.JsonFormatter().format(_record("batch failed", exc_info=sys.exc_info())))
    assert "Traceback" in line["exception"] and "RuntimeError: the model went away" in line["exception"]


def test_both_formats_redact_bearer_tokens_and_api_keys():
    key = "ng_0123456789ab_" + "s3cr3t-" * 6
    record = _record("got Authorization: Bearer %s and %s", "tok-xyz", key)
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        text = formatter.format(record)
        assert "tok-xyz" not in text and "s3cr3t" not in text
        assert "Bearer [redacted]" in text and "ng_0123456789ab_[redacted]" in text


def test_an_unknown_log_format_names_the_setting():
    with pytest.raises(ValueError, match="NOGRAD_LOG_FORMAT"):
        logs.formatter("yaml")


def test_a_context_copy_sees_fields_annotated_in_another_copy():
    """FastAPI runs sync dependencies in a thread, on a copy of the request's context: the tenant it annotates
    must reach the request's own lines."""
    import contextvars

    with logs.bound(request_id="r2"):
        contextvars.copy_context().run(logs.annotate, tenant="bob")
        assert logs.current() == {"request_id": "r2", "tenant": "bob"}


# ------------------------------------------------------------------ request ids
@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123.x_Y", True), ("a" * 128, True), ("a" * 129, False), ("has space", False), ("é", False), ("", False)],
)
def test_request_ids_are_taken_from_the_header_only_when_valid(given, kept):
    rid = request_id([(b"x-request-id", given.encode())])
    assert (rid == given) is kept
    if not kept:
        assert len(rid) == 32 and rid != request_id([])


def test_every_response_has_a_request_id_and_its_lines_carry_it(api, json_lines):
    given = api("GET", "/v1/jobs", headers={"X-Request-ID": "trace-42"})
    assert given.headers["X-Request-ID"] == "trace-42"
    refused = api("GET", "/v1/jobs", None, headers={"X-Request-ID": "no spaces please"})  # 401, before routing
    assert refused.status_code == 401 and len(refused.headers["X-Request-ID"]) == 32
    access = {line["request_id"]: line for line in json_lines() if line["logger"] == "nograd.access"}
    line = access["trace-42"]
    assert (line["tenant"], line["route"], line["status"], line["method"]) == ("alice", "/v1/jobs", 200, "GET")
    assert "tenant" not in access[refused.headers["X-Request-ID"]]


def test_a_jobs_lines_carry_its_id_and_tenant(api, json_lines):
    job = api.submit()
    assert api.wait(job["id"])["status"] == "succeeded"
    lines = [line for line in json_lines() if line["logger"] == "nograd.jobs"]
    assert any(line.get("job_id") == job["id"] and line.get("tenant") == "alice" for line in lines), lines
    assert all("request_id" not in line for line in lines)  # the runner's work is no request's


def test_keys_and_secrets_appear_in_no_log_line(api, json_lines):
    key = api.keys["alice"]
    secret = "sk-live-" + "q7" * 20
    stored = api("POST", "/v1/secrets", json={"name": "openai", "value": secret})
    assert stored.status_code == 201
    assert api("POST", "/v1/secrets", json={"name": "bad name!", "value": secret}).status_code == 422
    api("GET", "/v1/jobs", None, headers={"Authorization": f"Bearer {key}x"})  # a wrong key is refused, not logged
    api.wait(api.submit()["id"])
    lines = json_lines()
    assert any(line["logger"] == "nograd.access" and line["path"] == "/v1/secrets" for line in lines)
    text = "\n".join(json.dumps(line) for line in lines)
    # the key's secret part (after "ng_<id>_"; urlsafe base64, so it may hold "_" itself)
    assert key not in text and key.split("_", 2)[2] not in text
    assert secret not in text


def test_nograd_serve_writes_only_json_lines_uvicorn_included(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    key = create_key(data, "alice")
    proc = serve(data, None, port, env={"NOGRAD_LOG_FORMAT": "json"})
    try:
        headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "from-the-client"}
        response = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers=headers, timeout=10)
        assert response.status_code == 200 and response.headers["X-Request-ID"] == "from-the-client"
    finally:
        proc.terminate()  # uvicorn ends on the signal it caught (-15), after a graceful shutdown
    records = [json.loads(line) for line in proc.output().splitlines()]  # every line is one JSON object
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines went through it too
    assert any(r["logger"] == "nograd" and r["message"].startswith("serving on") for r in records)
    access = [r for r in records if r.get("request_id") == "from-the-client"]
    assert [(r["logger"], r["route"], r["tenant"]) for r in access] == [("nograd.access", "/v1/jobs", "alice")]
    assert key not in proc.output()


def test_python_warnings_are_log_lines_of_their_own_format():
    """A warning a library raises in a service process is a JSON line too (logger py.warnings), with the job it
    belongs to, not a bare line on stderr."""
    code = (
        "import warnings; from nograd.service import logs; logs.configure('json')\n"
        "with logs.bound(job_id='job_1'): warnings.warn('replayed up to rounding', RuntimeWarning)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(text) for text in proc.stderr.splitlines()]  # the only line, and it is JSON
    assert (line["logger"], line["level"], line["job_id"]) == ("py.warnings", "WARNING", "job_1")
    assert "RuntimeWarning: replayed up to rounding" in line["message"]


def test_refused_requests_access_lines_are_rate_limited(caplog):
    """A flood of refusals (401s, 429s) cannot flood the log: per second at most `per_second` lines, then one line
    counting the ones left out."""
    from nograd.service.api.telemetry import RefusalLines

    now = [100.2]
    lines = RefusalLines(per_second=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="nograd.access"):
        assert [lines.admit() for _ in range(5)] == [True, True, True, False, False]
        now[0] = 101.0
        assert lines.admit()
    assert [r.getMessage() for r in caplog.records] == [
        "2 more refused requests in the previous second were not logged"
    ]
