"""OpenAI-compatible completions/chat endpoints behind the `ModelClient` protocol (OpenAI, llama.cpp's server,
vLLM's text API, ...).

Every prompt is rendered by `nograd.clients.render` (the same text the local engine tokenizes); with `api: chat` the
text is the user message and the server applies the model's chat template, as the engine does under `TaskSpec.chat`.

Label-word scores come from the log-probabilities of the first generated token (max_tokens 1, temperature 0):
a label's score is the log-probability of the returned top token whose text equals the label word (compared
without surrounding whitespace; case-insensitively only when no token matches exactly), else of the longest
returned token that starts the label word (at least 3 characters, or the whole word when shorter).

A label word without an exact match in the returned top list is **rescored** (`rescore_missing`, on by default;
the near matches above are the fallback): the client asks once more with `logit_bias` +100 on the word's first
token, which makes the endpoint generate that token and report its log-probability. The token id comes from
`label_token_ids` when given, else from the server's tokenizer route (llama-cpp-python `/extras/tokenize`,
llama.cpp and vLLM `/tokenize`). Most servers report log-probabilities from before the bias (the other tokens'
values are unchanged); one that reports them after it is corrected with a token both answers list:
log p(w) = log p(b) + (log p'(w) - log p'(b)) - 100. Rescored words are counted (`usage["rescored_label_words"]`).

A word that is still without a score (no token id, or the endpoint ignored the bias) gets the **floor**: the
lowest returned log-probability minus `floor_margin` (1 nat by default): the word is known to be less likely than
everything returned. Every floored score is counted (`usage["missing_label_words"]`) and reported with the job.

Requests run concurrently up to `concurrency`, at most the operator's `RemoteLimits.max_concurrency` (tokenizer
probes included); `timeout` bounds each request as a whole. 429, 5xx, timeouts, connection errors and unparseable
bodies are retried with exponential backoff and full jitter, honouring `Retry-After`. A response without
log-probabilities is not retried: the endpoint cannot serve label-word scores and the job fails with that message.
Every response body is streamed and read up to `RemoteLimits.max_response_bytes` (decompressed size; identity is
asked for): a larger one stops the read there and fails the job (`ResponseTooLarge`, not retried). API keys are
held only in memory and sent as a bearer token; they never appear in errors, logs or `repr`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
import zlib
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
import numpy as np

from .endpoint import EndpointConfig, RemoteError, RemoteLimits, ResponseTooLarge
from .guard import guarded_transport
from .labels import match_label, with_floor
from .losses import score_logits
from .render import candidates, full_text, label_words
from .types import DISCRETE_MODES, EvalRequest, EvalResult, InvalidRequest, ModelInfo, PromptSpec, TaskSpec

log = logging.getLogger(__name__)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


#: Bytes of an error response (4xx) read for its message.
ERROR_BODY_BYTES = 4096


async def read_body(response: httpx.Response, cap: int, *, prefix: bool = False) -> bytearray:
    """A streamed response's body, decoded, never more than `cap` bytes of it held: past the cap the read stops and
    ResponseTooLarge is raised (with `prefix`: the first `cap` bytes are returned). Raises zlib.error for a body
    that is not the gzip/deflate it says it is, RemoteError for an encoding other than those."""
    length = response.headers.get("content-length", "")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        if not prefix and length.isdigit() and int(length) > cap:
            raise _too_large(response, cap)

        def decode(chunk: bytes, room: int) -> bytes:
            return chunk
    elif encoding in ("gzip", "x-gzip", "deflate"):
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, told apart by zlib

        def decode(chunk: bytes, room: int) -> bytes:
            return decompressor.decompress(chunk, room)  # at most `room` bytes: a compression bomb stops here
    else:
        raise RemoteError(f"{response.request.url} answered in Content-Encoding {encoding!r}; identity was asked for")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += decode(chunk, cap + 1 - len(body))
        if len(body) > cap:
            if prefix:
                return body[:cap]
            raise _too_large(response, cap)
    return body  # not copied: json.loads takes a bytearray


def _too_large(response: httpx.Response, cap: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"{response.request.url} answered more than {cap / 2**20:g} MB, the limit on a remote endpoint's response "
        "(the operator sets it with NOGRAD_REMOTE_MAX_RESPONSE_MB); the read stopped there and the job is not retried"
    )


class _Retryable(Exception):
    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class OpenAIClient:
    """An OpenAI-compatible endpoint. Text-only: serves the `none`, `text` and `demos` prompt modes. One instance per
    job: `usage` is that job's running token account."""

    #: The endpoint kind this class serves (`nograd.clients.kinds.ENDPOINT_KINDS` is built from it).
    kind: ClassVar[str] = "openai"
    description: ClassVar[str] = "any OpenAI-compatible server (OpenAI, llama.cpp, vLLM's text API)"
    prompt_modes: ClassVar[tuple[str, ...]] = ("none", *DISCRETE_MODES)
    #: Whether soft prompts go out as embeddings built here (from a local copy of the served weights).
    embeds_locally: ClassVar[bool] = False

    def __init__(
        self,
        config: EndpointConfig,
        api_key: str | None = None,
        *,
        transport=None,
        allow: tuple[str, ...] | None = None,
        limits: RemoteLimits | None = None,
        sleep=asyncio.sleep,
    ):
        """`allow`: apply the operator allowlist to every connection (`GuardedBackend`); None: no check (the CLI,
        on the user's own machine). `limits`: the operator's caps on response size and requests in flight (None:
        `RemoteLimits()`). `transport` (tests) replaces the transport altogether."""
        self.config, self.limits = config, limits or RemoteLimits()
        self._headers = {"Accept-Encoding": "identity"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        if transport is None and allow is not None:
            transport = guarded_transport(allow)
        self._transport, self._sleep, self._guarded = transport, sleep, allow is not None
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(self.limits.concurrency(config))  # every request, tokenizer probes too
        self.usage: dict[str, int] = {
            "requests": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "label_scores": 0,
            "rescored_label_words": 0,
            "missing_label_words": 0,
        }
        self._label_ids = {k.strip(): v for k, v in (config.label_token_ids or {}).items()}  # the user's, by word
        self._token_ids: dict[str, int | None] = {}  # the tokenizer route's, by the exact string that follows
        self._tokenizer_lock = asyncio.Lock()
        self._tokenize_route: tuple[str, str] | None | bool = False  # False: not looked for yet

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.config.base_url!r}, model={self.config.model!r})"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url.rstrip("/") + "/",
                timeout=self.config.timeout,
                headers=self._headers,
                transport=self._transport,
                follow_redirects=False,
                trust_env=not self._guarded,
            )  # no proxy that would bypass the check
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def describe(self) -> ModelInfo:
        host = urlsplit(self.config.base_url).hostname
        return ModelInfo(
            model_id=f"{self.config.kind}:{self.config.model}@{host}",
            kind="remote",
            hidden_size=0,
            n_layers=0,
            max_length=0,
            prompt_modes=self.prompt_modes,
            device="remote",
            dtype="",
        )

    async def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray | None:
        """None: a remote endpoint does not hand out prompt tensors."""
        return None

    async def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> None:
        """None: a remote endpoint does not hand out its embedding matrix."""
        return None

    async def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> None:
        """None: a remote endpoint does not hand out its embedding matrix."""
        return None

    # ---------------------------------------------------------------- one request, with retries
    async def _post(self, path: str, body: dict) -> dict:
        c = self.config
        for attempt in range(c.max_retries + 1):
            try:
                async with self._slots:
                    return await self._post_once(path, body)
            except _Retryable as exc:
                if attempt == c.max_retries:
                    raise RemoteError(f"{c.base_url}: {exc} (gave up after {attempt + 1} attempts)") from None
                self.usage["retries"] += 1
                wait = (
                    exc.wait if exc.wait is not None else random.uniform(0, min(c.max_backoff, c.backoff * 2**attempt))
                )
                log.info("remote %s: %s; retrying in %.2f s", urlsplit(c.base_url).hostname, exc, wait)
                await self._sleep(min(wait, c.max_backoff))
        raise AssertionError("unreachable")

    async def _send(self, url: str, body: dict) -> tuple[httpx.Response, bytearray]:
        """POST `body` to `url` (relative to `base_url`, or absolute) within `timeout`: the response and its body,
        read up to the cap (429 and 5xx: not read; 4xx: its first bytes). Call it holding a slot."""
        async with asyncio.timeout(self.config.timeout), self._http().stream("POST", url, json=body) as response:
            self.usage["requests"] += 1
            status = response.status_code
            if status == 429 or status >= 500:
                return response, bytearray()
            if status >= 400:
                return response, await read_body(response, ERROR_BODY_BYTES, prefix=True)
            return response, await read_body(response, self.limits.max_response_bytes)

    async def _post_once(self, path: str, body: dict) -> dict:
        try:
            response, content = await self._send(path, body)
        except (httpx.TimeoutException, TimeoutError):
            raise _Retryable("timed out") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        except zlib.error:
            raise _Retryable("the response does not decompress") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            text = content.decode("utf-8", errors="replace")[:300]
            raise RemoteError(f"{self.config.base_url}{path} answered HTTP {response.status_code}: {text}")
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            raise _Retryable("the response is not JSON") from None
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(key), int):
                    self.usage[key] += usage[key]
        return data

    # ---------------------------------------------------------------- scoring
    def _top_logprobs(self, data: dict) -> dict[str, float]:
        """The first generated token's top log-probabilities (token text -> logprob)."""
        try:
            choice = data["choices"][0]
            logprobs = choice.get("logprobs")
            if self.config.api == "chat":
                entries = logprobs["content"][0]["top_logprobs"]
                top = {e["token"]: float(e["logprob"]) for e in entries}
            else:
                top = {str(t): float(v) for t, v in logprobs["top_logprobs"][0].items()}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RemoteError(
                f"{self.config.base_url} returned no top log-probabilities for the first token; the "
                f"endpoint must support logprobs (top_logprobs) on its {self.config.api} API"
            ) from None
        if any(not math.isfinite(v) for v in top.values()):
            top = {t: v for t, v in top.items() if math.isfinite(v)}
        return top

    def _body(self, text: str) -> tuple[str, dict]:
        c = self.config
        if c.api == "chat":
            return "chat/completions", {
                "model": c.model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": min(c.top_logprobs, 20),
            }
        return "completions", {
            "model": c.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": c.top_logprobs,
        }

    async def _score_text(self, text: str, words: tuple[str, ...]) -> list[float]:
        c = self.config
        path, body = self._body(text)
        top = self._top_logprobs(await self._post(path, body))
        found = [match_label(top, word, exact_only=c.rescore_missing) for word in words]
        for i, word in enumerate(words):
            if found[i] is None and c.rescore_missing:
                # Exactly this word's first token, rather than a near match (another case, a prefix) in the list.
                rescored = await self._rescore(text, word, top)
                self.usage["rescored_label_words"] += rescored is not None
                found[i] = rescored if rescored is not None else match_label(top, word)
        scores, missing = with_floor(top, found, c.floor_margin)
        self.usage["label_scores"] += len(words)
        self.usage["missing_label_words"] += missing
        return scores

    # ---------------------------------------------------------------- missing label words
    BIAS = 100.0

    async def _rescore(self, text: str, word: str, top: dict[str, float]) -> float | None:
        """`word`'s log-probability from a second request with logit_bias on its first token (None when the
        endpoint cannot say: no token id, or the bias was ignored)."""
        token_id = await self._first_token_id(word)
        if token_id is None:
            return None
        path, body = self._body(text)
        body["logit_bias"] = {str(token_id): self.BIAS}
        generated, value, top2 = self._generated(await self._post(path, body))
        piece = (generated or "").strip().lower()
        if not piece or value is None or not word.strip().lower().startswith(piece):
            return None  # the endpoint did not generate the biased token: it ignores logit_bias
        # Other tokens' values tell how the answer is reported: unchanged -> before the bias (OpenAI, vLLM and
        # llama.cpp by default); shifted -> after it, and a token both answers list corrects the value.
        shared = [t for t in top2 if t in top and t != generated]
        if not shared:
            return value if value <= min(top.values()) + 1e-3 else None
        b = shared[0]
        if abs(top2[b] - top[b]) < 1e-3:
            return value
        return top[b] + (value - top2[b]) - self.BIAS

    def _generated(self, data: dict) -> tuple[str | None, float | None, dict[str, float]]:
        """The generated token's text, its log-probability and the top list, from a 1-token answer."""
        try:
            logprobs = data["choices"][0]["logprobs"]
            if self.config.api == "chat":
                entry = logprobs["content"][0]
                return entry["token"], float(entry["logprob"]), self._top_logprobs(data)
            return logprobs["tokens"][0], float(logprobs["token_logprobs"][0]), self._top_logprobs(data)
        except (KeyError, IndexError, TypeError, ValueError, RemoteError):
            return None, None, {}

    async def _first_token_id(self, word: str) -> int | None:
        """The first token of `word` (the label string as it follows the text, e.g. " positive")."""
        if word.strip() in self._label_ids:
            return self._label_ids[word.strip()]
        async with self._tokenizer_lock:
            if word not in self._token_ids:
                ids = await self._tokenize(word)
                if ids is None and self._tokenize_route:
                    return None  # the route failed this time; ask again for the next miss
                self._token_ids[word] = ids[0] if ids else None
            return self._token_ids[word]

    async def _tokenize(self, text: str) -> list[int] | None:
        """`text`'s token ids from the server's tokenizer route, without any special tokens it prepends; None when
        the server has no such route (found once, then remembered)."""
        root = self.config.base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        routes = [("/extras/tokenize", "input"), ("/tokenize", "prompt"), ("/tokenize", "content")]
        if self._tokenize_route is None:
            return None
        for path, field in [self._tokenize_route] if self._tokenize_route else routes:
            ids = [await self._tokenize_at(root + path, field, t) for t in (text, "")]
            if ids[0] is None or ids[1] is None:
                continue
            self._tokenize_route = (path, field)
            special = len(ids[1]) if ids[0][: len(ids[1])] == ids[1] else 0
            return ids[0][special:] or None
        if not self._tokenize_route:
            self._tokenize_route = None
            log.info(
                "remote %s: no tokenizer route; label words missing from the top list get the floor",
                urlsplit(self.config.base_url).hostname,
            )
        return None

    async def _tokenize_at(self, url: str, field: str, text: str) -> list[int] | None:
        """`text`'s ids from one tokenizer route; None when it does not answer them (a response past the size cap
        fails the job: ResponseTooLarge)."""
        try:
            async with self._slots:
                response, content = await self._send(url, {"model": self.config.model, field: text})
        except (httpx.HTTPError, TimeoutError, zlib.error):
            return None
        try:
            tokens = json.loads(content).get("tokens") if response.status_code == 200 else None
        except (ValueError, RecursionError, AttributeError):
            return None
        ok = isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
        return tokens if ok else None

    def texts(self, request: EvalRequest) -> list[list[str]]:
        """(P, E) model inputs: each candidate's prompt rendered around each example (`nograd.clients.render`)."""
        mode = request.prompt.mode
        if mode not in self.prompt_modes:
            raise InvalidRequest(
                f"prompt mode {mode!r} sends embeddings; this endpoint takes text only (use a "
                "discrete method: bbpl, rlprompt, icl_search)"
            )
        if request.task.chat != (self.config.api == "chat"):
            raise InvalidRequest(
                f"this endpoint's api is {self.config.api!r}, so the job must "
                f"{'' if self.config.api == 'chat' else 'not '}score under the chat template "
                "(option chat_template)"
            )
        concrete = [(request.task, "")] if mode == "none" else candidates(request)
        texts2 = request.examples.texts2 or [None] * len(request.examples)
        return [
            [full_text(task, text, text2, prompt=prompt) for text, text2 in zip(request.examples.texts, texts2)]
            for task, prompt in concrete
        ]

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        started = time.perf_counter()
        before = dict(self.usage)
        grid = self.texts(request)
        words = label_words(request.task)
        unique = sorted({t for row in grid for t in row})
        tasks = [asyncio.ensure_future(self._score_text(t, words)) for t in unique]
        try:
            scored = dict(zip(unique, await asyncio.gather(*tasks)))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        logits = np.asarray([[scored[t] for t in row] for row in grid], dtype=np.float64)
        return await self._result(request, logits, started, before)

    async def _result(self, request: EvalRequest, logits: np.ndarray, started: float, before: dict) -> EvalResult:
        """The evaluation's result, with what the endpoint charged since `before` (a copy of `usage`)."""
        return score_logits(
            request,
            logits,
            model_id=(await self.describe()).model_id,
            started=started,
            usage={k: self.usage[k] - before[k] for k in self.usage},
        )
