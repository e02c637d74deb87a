"""Remote endpoints under abuse (issue 12, item 3): IPv6 forms that carry a loopback or private IPv4 address are
refused at submit and on every connection; response bodies are read up to the operator's cap (a 200 MB body, plain,
with a declared length, or a gzip bomb, leaves the process's memory about where it was); requests in flight never
pass the operator's concurrency cap, and a job asking for more is a 422."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
import zlib

import pytest
import uvicorn
from fastapi.testclient import TestClient
from procs import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from nograd.clients.endpoint import EndpointConfigError, RemoteError, RemoteLimits, ResponseTooLarge
from nograd.clients.guard import check_addresses, check_url, embedded_ipv4, guarded_transport
from nograd.clients.kinds import parse_endpoint
from nograd.clients.openai import OpenAIClient
from nograd.clients.types import EvalRequest, Examples, PromptSpec, TaskSpec
from nograd.service.api import create_app
from nograd.service.executor import JobExecutor
from nograd.service.settings import Settings

MB = 2**20
BODY_MB = 200  # what the hostile endpoint would send
TASK = TaskSpec(template="Review: {text} It was {mask}.", labels=("neg", "pos"), verbalizer=("bad", "great"))
EXAMPLES = Examples(texts=["a great film", "bad acting"], labels=[1, 0])
ONE = Examples(texts=["a great film"], labels=[1])
BBPL = {
    "method": "bbpl",
    "task": "mr",
    "model": "fake",
    "budget": 20,
    "dev_every": 10,
    "k_shot": 4,
    "options": {"popsize": 4, "prompt_length": 2, "vocab_size": 20, "ngram_min_count": 2},
}


# ------------------------------------------------------------------ a hostile endpoint
class Hostile:
    """An OpenAI-compatible server in a thread; the first path segment picks its behaviour:
    big (a 200 MB chunked body, generated lazily), declared (the same with its Content-Length), gzip (a gzip bomb:
    200 MB of zeros in ~200 KB), slow (a valid answer after 50 ms), miss (a valid answer without the word " bad",
    so the client asks the tokenizer route, which answers 200 MB), probe (as miss, but the tokenizer route answers
    after 50 ms). Valid answers count the requests in flight."""

    def __init__(self):
        self.requests: dict[str, int] = {}
        self.sent = 0  # bytes of body handed to the server
        self.in_flight = self.max_in_flight = 0
        self._bomb: list[bytes] | None = None
        routes = [
            Route("/{mode}/v1/completions", self._completions, methods=["POST"]),
            Route("/{mode}/extras/tokenize", self._tokenize, methods=["POST"]),
        ]
        self.port = free_port()
        self._server = uvicorn.Server(
            uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="error")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def __enter__(self) -> Hostile:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("hostile endpoint did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    async def _huge(self, request: Request):
        chunk = b" " * MB  # one buffer, sent 200 times: the server itself holds 1 MB
        for _ in range(BODY_MB):
            if await request.is_disconnected():  # the client hung up: `sent` says how much it took
                return
            self.sent += len(chunk)
            yield chunk

    async def _gzip_bomb(self, request: Request):
        if self._bomb is None:
            compressor, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(MB)
            self._bomb = [compressor.compress(zeros) for _ in range(BODY_MB)] + [compressor.flush()]
        for piece in self._bomb:
            if await request.is_disconnected():
                return
            self.sent += len(piece)
            yield piece

    @staticmethod
    def _answer(words: dict[str, float]) -> dict:
        logprobs = {"tokens": [" great"], "token_logprobs": [-0.5], "top_logprobs": [words]}
        return {"choices": [{"text": " great", "logprobs": logprobs}]}

    async def _completions(self, request: Request):
        mode = request.path_params["mode"]
        self.requests[mode] = self.requests.get(mode, 0) + 1
        await request.body()
        if mode == "big":
            return StreamingResponse(self._huge(request), media_type="application/json")
        if mode == "declared":
            return StreamingResponse(self._huge(request), headers={"content-length": str(BODY_MB * MB)})
        if mode == "gzip":
            return StreamingResponse(self._gzip_bomb(request), headers={"content-encoding": "gzip"})
        await self._slowly()
        if mode in ("miss", "probe"):
            return JSONResponse(self._answer({" great": -0.5, " good": -1.0}))
        return JSONResponse(self._answer({" great": -0.5, " bad": -1.5}))

    async def _slowly(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.in_flight -= 1

    async def _tokenize(self, request: Request):
        self.requests["tokenize"] = self.requests.get("tokenize", 0) + 1
        if request.path_params["mode"] == "miss":
            return StreamingResponse(self._huge(request), media_type="application/json")
        text = (await request.json())["input"]
        await self._slowly()
        return JSONResponse({"tokens": [1] + [100] * len(text.split())})


@pytest.fixture(scope="module")
def hostile():
    with Hostile() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(hostile):
    hostile.requests.clear()
    hostile.sent = hostile.in_flight = hostile.max_in_flight = 0


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


class PeakRss:
    """The process's peak RSS above its level at entry, sampled every 5 ms in a thread."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, _rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / MB


def _client(url: str, limits: RemoteLimits | None = None, **kw) -> OpenAIClient:
    options = dict(kind="openai", base_url=url, model="m", backoff=0.01, timeout=20.0, max_retries=3, **kw)
    return OpenAIClient(parse_endpoint(options), limits=limits)


def _evaluate(client: OpenAIClient, texts=("",), examples: Examples = EXAMPLES):
    request = EvalRequest(TASK, examples, PromptSpec(mode="text"), texts=list(texts))

    async def go():
        try:
            return await client.evaluate(request)
        finally:
            await client.aclose()

    return asyncio.run(go())


# ------------------------------------------------------------------ SSRF: IPv4 inside IPv6
REFUSED = [
    ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
    ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible
    ("::ffff:0:a00:1", "10.0.0.1"),  # SIIT IPv4-translated
    ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64 well-known prefix
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # ... the cloud metadata address
    ("64:ff9b:1::c0a8:1", "192.168.0.1"),  # NAT64 local-use prefix, /96 layout
    ("64:ff9b:1:0:7f:0:100:0", "127.0.0.1"),  # ... /64 layout (RFC 6052)
    ("2002:7f00:1::", "127.0.0.1"),  # 6to4
    ("2002:a00:1:1::1", "10.0.0.1"),
    ("2001:0:7f00:1::a247:27dd", "127.0.0.1"),  # Teredo server (the client, inverted, is 93.184.216.34)
    ("2001:0:5db8:d822:0:0:80ff:fffe", "127.0.0.1"),  # Teredo client (inverted): server 93.184.216.34 is public
    ("2a00:1450:4001::200:5efe:a00:1", "10.0.0.1"),  # ISATAP
]
ADMITTED = [
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
    "2001:0:5db8:d822::a247:27dd",  # Teredo, server and client 93.184.216.34
    "2606:4700:4700::1111",  # plain global IPv6
]


@pytest.mark.parametrize("address, ipv4", REFUSED)
def test_ipv6_forms_carrying_a_private_ipv4_address_are_refused(address, ipv4):
    assert ipv4 in [str(a) for a in embedded_ipv4(ipaddress.ip_address(address))]
    with pytest.raises(EndpointConfigError, match=f"carries the IPv4 address .*{ipv4}.*NOGRAD_REMOTE_ALLOW") as info:
        check_addresses("h", [address])
    assert info.value.field == "base_url"
    check_addresses("h", [address], allow=(f"{ipv4}/32", "0.0.0.0/8"))  # the operator admits what it carries


@pytest.mark.parametrize("address", ADMITTED)
def test_ipv6_forms_carrying_a_public_ipv4_address_pass(address):
    check_addresses("h", [address])


def test_the_allowlist_must_admit_the_carried_address_not_another():
    with pytest.raises(EndpointConfigError, match="127.0.0.1"):
        check_addresses("h", ["64:ff9b::7f00:1"], allow=("10.0.0.0/8",))
    check_addresses("h", ["64:ff9b::7f00:1"], allow=("64:ff9b::/96",))  # the IPv6 network itself, explicitly


@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]:9/v1",
        "http://[::ffff:127.0.0.1]:9/v1",
        "http://[64:ff9b::7f00:1]:9/v1",
        "http://[2002:7f00:1::]:9/v1",
        "http://2130706433:9/v1",  # decimal
        "http://0x7f000001:9/v1",  # hexadecimal
        "http://017700000001:9/v1",  # octal
        "http://127.1:9/v1",  # short form
    ],
)
def test_numeric_hosts_are_checked_as_getaddrinfo_reads_them(url):
    """Real getaddrinfo, no DNS: each form is the loopback address it stands for."""
    with pytest.raises(EndpointConfigError, match="private or reserved"):
        check_url(url)


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://0177.0.0.1:9/v1", "not a valid URL"),  # httpx refuses it, so the check does not guess
        ("http://[::1]x/v1", "not a valid URL"),
        ("http://user@93.184.216.34/v1", "credentials"),
        ("http://@93.184.216.34/v1", "credentials"),
        ("http://u:p@93.184.216.34/v1", "credentials"),
    ],
)
def test_odd_urls_are_refused(url, message):
    with pytest.raises(EndpointConfigError, match=message):
        check_url(url, resolve=lambda host, port: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0))])


def test_the_checked_host_is_the_one_httpx_connects_to():
    seen = []

    def resolve(host, port):
        seen.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0))]

    check_url("http://a\u3002example/v1", resolve=resolve)  # an ideographic full stop: httpx reads a.example
    check_url("http://b\u00fccher.example/v1", resolve=resolve)
    assert seen == ["a.example", "xn--bcher-kva.example"]


@pytest.mark.parametrize("resolved", ["::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "::127.0.0.1"])
def test_every_connection_checks_the_carried_address(hostile, resolved):
    """A name that resolves, when the job runs, to an IPv6 form of loopback is refused before connecting."""

    async def rebound(host, port):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (resolved, port, 0, 0))]

    config = parse_endpoint(
        {"kind": "openai", "base_url": f"http://api.example.com:{hostile.port}/slow/v1", "model": "m", "timeout": 5}
    )
    client = OpenAIClient(config, transport=guarded_transport((), resolve=rebound))
    with pytest.raises(RemoteError, match="resolves to .*carries the IPv4 address 127.0.0.1"):
        _evaluate(client)
    assert not hostile.requests


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 sockets")
def test_an_allowed_carried_address_is_connected_to(hostile):
    async def rebound(host, port):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:127.0.0.1", port, 0, 0))]

    config = parse_endpoint(
        {"kind": "openai", "base_url": f"http://api.example.com:{hostile.port}/slow/v1", "model": "m", "timeout": 5}
    )
    client = OpenAIClient(config, transport=guarded_transport(("127.0.0.1",), resolve=rebound))
    assert _evaluate(client).usage["requests"] == 2


# ------------------------------------------------------------------ the API
def _api(tmp_path, **settings) -> tuple[TestClient, dict]:
    config = Settings(data_dir=tmp_path / "data", models=["fake"], auth=True, lease_seconds=2.0, **settings)
    client = TestClient(create_app(config))
    return client, config


def _post(client: TestClient, key: str, endpoint: dict, **job):
    body = {**BBPL, **job, "endpoint": {"kind": "openai", "model": "m", **endpoint}}
    return client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})


def _field(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return ".".join(str(p) for p in detail[0]["loc"][1:])


def test_submit_refuses_urls_carrying_loopback(tmp_path):
    client, _ = _api(tmp_path)
    with client:
        key = client.app.state.store.create_key("alice")
        for url in ("http://[64:ff9b::7f00:1]:9/v1", "http://[2002:7f00:1::]:9/v1", "http://[::127.0.0.1]:9/v1"):
            response = _post(client, key, {"base_url": url})
            assert response.status_code == 422, response.text
            assert _field(response) == "endpoint.base_url"
            assert "127.0.0.1" in response.text and "NOGRAD_REMOTE_ALLOW" in response.text
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()["count"] == 0


def test_submit_refuses_concurrency_above_the_operators_cap(tmp_path, hostile):
    client, _ = _api(tmp_path, remote_allow=["127.0.0.1"], remote_max_concurrency=3)
    with client:
        key = client.app.state.store.create_key("alice")
        response = _post(client, key, {"base_url": hostile.url("slow"), "concurrency": 4})
        assert response.status_code == 422, response.text
        assert _field(response) == "endpoint.concurrency"
        assert "at most 3" in response.text and "NOGRAD_REMOTE_MAX_CONCURRENCY" in response.text
        response = _post(client, key, {"base_url": hostile.url("slow"), "concurrency": 3})
        assert response.status_code == 201, response.text


def test_the_default_cap_is_the_settings(tmp_path):
    settings = Settings(data_dir=tmp_path)
    limits = RemoteLimits.from_settings(settings)
    assert limits == RemoteLimits(16 * MB, 8) == JobExecutor.from_settings(None, None, settings).remote_limits
    with pytest.raises(EndpointConfigError, match="at most 8") as info:
        limits.check(parse_endpoint({"kind": "openai", "base_url": "https://x/v1", "model": "m", "concurrency": 9}))
    assert info.value.field == "concurrency"


def test_a_job_whose_endpoint_answers_too_much_fails_at_once(tmp_path, hostile):
    """Through the runner: the operator's cap reaches the client, the job fails with it and is not retried."""
    client, _ = _api(tmp_path, remote_allow=["127.0.0.1"], remote_max_response_mb=0.5)
    with client:
        key = client.app.state.store.create_key("alice")
        response = _post(client, key, {"base_url": hostile.url("big"), "concurrency": 2})
        assert response.status_code == 201, response.text
        job_id, deadline = response.json()["id"], time.monotonic() + 60
        while (job := client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json())[
            "status"
        ] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    assert job["status"] == "failed"
    assert "more than 0.5 MB" in job["error"] and "NOGRAD_REMOTE_MAX_RESPONSE_MB" in job["error"]
    assert hostile.requests["big"] <= 2  # the requests in flight when the first failed; no retries
    assert hostile.sent < 32 * MB


# ------------------------------------------------------------------ response size
@pytest.mark.parametrize("mode", ["big", "declared", "gzip"])
def test_a_200_mb_response_stops_at_the_cap_in_bounded_memory(hostile, mode):
    client = _client(hostile.url(mode))  # the default cap, 16 MB
    with PeakRss() as rss, pytest.raises(ResponseTooLarge, match=r"more than 16 MB.*NOGRAD_REMOTE_MAX_RESPONSE_MB"):
        _evaluate(client, examples=ONE)
    assert hostile.requests[mode] == 1  # final: not retried (max_retries 3)
    assert rss.growth_mb < 64, f"RSS grew {rss.growth_mb:.0f} MB reading a {BODY_MB} MB body"
    # The client hung up at once (declared length) or at the cap: the rest was never sent (socket buffers aside).
    assert hostile.sent < (16 * MB if mode == "declared" else 64 * MB)
    print(f"{mode}: RSS +{rss.growth_mb:.1f} MB, server sent {hostile.sent / MB:.1f} MB")


def test_tokenizer_probes_are_capped_too(hostile):
    client = _client(hostile.url("miss"), limits=RemoteLimits(max_response_bytes=MB))
    with PeakRss() as rss, pytest.raises(ResponseTooLarge, match="more than 1 MB"):
        _evaluate(client, examples=ONE)
    assert hostile.requests["tokenize"] == 1 and rss.growth_mb < 32


def test_a_small_cap_still_reads_normal_answers(hostile):
    result = _evaluate(_client(hostile.url("slow"), limits=RemoteLimits(max_response_bytes=4096)))
    assert result.usage["requests"] == 2


# ------------------------------------------------------------------ concurrency
@pytest.mark.parametrize("asked, cap, expected", [(16, 3, 3), (2, 8, 2)])
def test_requests_in_flight_never_pass_the_cap(hostile, asked, cap, expected):
    client = _client(hostile.url("slow"), limits=RemoteLimits(max_concurrency=cap), concurrency=asked)
    texts = [f"prompt {i}" for i in range(12)]  # 12 candidates x 2 examples: 24 distinct requests
    assert _evaluate(client, texts).usage["requests"] == 24
    assert hostile.max_in_flight == expected  # reached (so requests did overlap) and never passed


def test_the_cli_default_honours_what_the_user_asks(hostile):
    client = _client(hostile.url("slow"), concurrency=12)
    assert client.limits == RemoteLimits() and client.limits.concurrency(client.config) == 12
    _evaluate(client, [f"prompt {i}" for i in range(12)])
    assert hostile.max_in_flight == 12


def test_tokenizer_probes_take_a_slot(hostile):
    """A label word missing from the top list sends tokenizer probes and rescoring requests while other texts are
    being scored: all of them share the slots."""
    client = _client(hostile.url("probe"), limits=RemoteLimits(max_concurrency=2))
    result = _evaluate(client, [f"prompt {i}" for i in range(6)])
    assert hostile.requests["tokenize"] == 2  # " bad" and "" (the special tokens), once
    assert result.usage["requests"] == 12 + 12 + 2  # scored, rescored (the bias is ignored: floor), probes
    assert hostile.max_in_flight == 2
