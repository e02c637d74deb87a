"""Remote LLM APIs behind the `ModelClient` protocol: OpenAI-compatible completions/chat, and vLLM.

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

Requests run concurrently up to `concurrency`; 429, 5xx, timeouts, connection errors and unparseable bodies are
retried with exponential backoff and full jitter, honouring `Retry-After`. A response without log-probabilities
is not retried: the endpoint cannot serve label-word scores and the job fails with that message. API keys are held
only in memory and sent as a bearer token; they never appear in errors, logs or `repr`.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import ipaddress
import logging
import math
import random
import socket
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
import numpy as np

from .render import DISCRETE_MODES, CandidateError, candidates, render
from .types import EvalRequest, EvalResult, ModelInfo

log = logging.getLogger(__name__)


class EndpointConfigError(ValueError):
    """An endpoint setting is invalid; the message names the field and the fix."""


class RemoteError(RuntimeError):
    """The remote endpoint failed in a way retries cannot fix (or retries ran out)."""


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to reach a remote model. `api_key_secret` names a tenant secret; never the key itself."""

    kind: Literal["openai", "vllm"]
    base_url: str
    model: str
    api: Literal["completions", "chat"] = "completions"
    api_key_secret: str | None = None
    top_logprobs: int = 20
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 6
    backoff: float = 0.5
    max_backoff: float = 30.0
    floor_margin: float = 1.0
    #: ask again with logit_bias for a label word missing from the top list (see the module docstring)
    rescore_missing: bool = True
    #: label word -> the endpoint's token id of its first token (else the server's tokenizer route is asked)
    label_token_ids: dict[str, int] | None = None
    #: vllm + BBT: the same model's weights here (a built-in name or a local path) to build prompt_embeds with.
    embedder_model: str | None = None
    exact_label_ids: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "EndpointConfig":
        if not isinstance(data, dict):
            raise EndpointConfigError("must be an object with kind, base_url and model")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EndpointConfigError(f"{unknown[0]} is not an endpoint setting; use {', '.join(sorted(known))}")
        values = {k: v for k, v in data.items() if v is not None}
        for name in ("kind", "base_url", "model"):
            if not isinstance(values.get(name), str) or not values[name]:
                raise EndpointConfigError(f"{name} is required (a non-empty string)")
        if values["kind"] not in ("openai", "vllm"):
            raise EndpointConfigError(f"kind {values['kind']!r} is unknown; use openai or vllm")
        if values.get("api", "completions") not in ("completions", "chat"):
            raise EndpointConfigError("api must be completions or chat")
        url = urlsplit(values["base_url"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise EndpointConfigError("base_url must be an http(s) URL with a host, e.g. https://api.openai.com/v1")
        if url.username or url.password:
            raise EndpointConfigError("base_url must not carry credentials; store the key as a secret")
        ids = values.get("label_token_ids")
        if ids is not None and (not isinstance(ids, dict) or not all(
                isinstance(k, str) and k.strip() and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in ids.items())):
            raise EndpointConfigError("label_token_ids must map each label word to its first token's id (an int "
                                      ">= 0), e.g. {\"positive\": 3967}")
        config = cls(**values)
        if not 1 <= config.top_logprobs <= 100 or not 1 <= config.concurrency <= 64:
            raise EndpointConfigError("top_logprobs must be in [1, 100] and concurrency in [1, 64]")
        if not (config.timeout > 0 and config.max_retries >= 0 and config.backoff >= 0):
            raise EndpointConfigError("timeout must be > 0, max_retries and backoff >= 0")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- allowlist
DEFAULT_DENIED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                  "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4", "::1/128",
                  "::/128", "fc00::/7", "fe80::/10", "::ffff:0:0/96")


def check_url(base_url: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = DEFAULT_DENIED,
              resolve=socket.getaddrinfo) -> None:
    """Refuse a base URL whose host resolves into a denied network (private, loopback, link-local, ... by
    default), unless the host name or every address it resolves to is in `allow` (host names or CIDRs).

    Raises EndpointConfigError naming the host and the operator setting that would allow it.
    """
    host = urlsplit(base_url).hostname or ""
    if host in allow:
        return
    try:
        infos = resolve(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointConfigError(f"base_url host {host!r} does not resolve ({exc})") from None
    check_addresses(host, [info[4][0] for info in infos], allow, deny)


def check_addresses(host: str, addresses: list[str], allow: tuple[str, ...] = (),
                    deny: tuple[str, ...] = DEFAULT_DENIED) -> None:
    """`check_url` for addresses `host` resolved to: each must be allowed, or neither denied nor non-global."""
    allowed = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]
    denied = [ipaddress.ip_network(d, strict=False) for d in deny]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if any(address in net for net in allowed):
            continue
        if any(address.version == net.version and address in net for net in denied) or not address.is_global:
            raise EndpointConfigError(
                f"base_url host {host!r} resolves to {address}, a private or reserved address this service does "
                f"not call; an operator can allow it with NOGRAD_REMOTE_ALLOW (host names or CIDRs)")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the allowlist applied to every connection, at connect time: the host is
    resolved, every address checked (`check_addresses`), and the connection made to a checked address. A check at
    submit time alone leaves DNS rebinding open: a name that resolved to a public address then may resolve to an
    internal one by the time the job runs. TLS still verifies the host name (httpcore passes it as SNI)."""

    def __init__(self, allow: tuple[str, ...] = (), deny: tuple[str, ...] = DEFAULT_DENIED, resolve=None):
        self._inner = httpcore.AnyIOBackend()
        self._allow, self._deny = tuple(allow), tuple(deny)
        self._resolve = resolve or (lambda host, port: anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM))

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options=None) -> httpcore.AsyncNetworkStream:
        if host not in self._allow:
            try:
                infos = await self._resolve(host, port)
            except (socket.gaierror, UnicodeError, OSError) as exc:
                raise httpcore.ConnectError(f"{host!r} does not resolve ({exc})") from None
            try:
                check_addresses(host, [info[4][0] for info in infos], self._allow, self._deny)
            except EndpointConfigError as exc:
                raise RemoteError(str(exc)) from None
            host = infos[0][4][0].split("%")[0]
        return await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise RemoteError("remote endpoints are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(allow: tuple[str, ...] = (), **kw) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go through `GuardedBackend` (httpx does not take a network backend
    directly, so its connection pool is rebuilt with one; tests/clients cover that this holds)."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(),
                                                   network_backend=GuardedBackend(allow, **kw))
    return transport


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- scoring
def match_label(top: dict[str, float], word: str, exact_only: bool = False) -> float | None:
    """A label word's log-probability in one position's top list (token text -> logprob), or None when absent
    (the matching rules are in the module docstring; `exact_only`: the first rule only)."""
    stripped = [(t.strip(), lp) for t, lp in top.items()]
    exact = [lp for t, lp in stripped if t and t == word.strip()]
    if exact_only:
        return max(exact) if exact else None
    target = word.strip().lower()
    exact = exact or [lp for t, lp in stripped if t and t.lower() == target]
    if exact:
        return max(exact)
    need = min(3, len(target))
    prefix = [(len(t), lp) for t, lp in stripped if len(t) >= need and target.startswith(t.lower())]
    return max(prefix)[1] if prefix else None


def label_scores(top: dict[str, float], words: tuple[str, ...], floor_margin: float) -> tuple[list[float], int]:
    """Label-word log-probabilities from one position's top log-probabilities (token text -> logprob), and how
    many words fell to the floor (see the module docstring)."""
    return with_floor(top, [match_label(top, word) for word in words], floor_margin)


def with_floor(top: dict[str, float], found: list[float | None], floor_margin: float) -> tuple[list[float], int]:
    """`found` with each None set to the floor (the lowest of `top` minus `floor_margin`), and how many were."""
    if not top:
        raise RemoteError("the endpoint returned an empty top_logprobs list")
    floor = min(top.values()) - floor_margin
    return [floor if v is None else v for v in found], sum(v is None for v in found)


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


class _Retryable(Exception):
    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class OpenAIClient:
    """An OpenAI-compatible endpoint (OpenAI, llama.cpp's server, vLLM's text API, ...). Text-only: serves the
    `none`, `text` and `demos` prompt modes. One instance per job: `usage` is that job's token account."""

    supports_embeddings = False

    def __init__(self, config: EndpointConfig, api_key: str | None = None, *, transport=None,
                 allow: tuple[str, ...] | None = None, sleep=asyncio.sleep):
        """`allow`: apply the operator allowlist to every connection (`GuardedBackend`); None: no check (the CLI,
        on the user's own machine). `transport` (tests) replaces the transport altogether."""
        self.config = config
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if transport is None and allow is not None:
            transport = guarded_transport(allow)
        self._transport, self._sleep, self._guarded = transport, sleep, allow is not None
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(config.concurrency)
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "label_scores": 0, "rescored_label_words": 0, "missing_label_words": 0}
        self._token_ids: dict[str, int | None] = {k.strip(): v for k, v in (config.label_token_ids or {}).items()}
        self._tokenizer_lock = asyncio.Lock()
        self._tokenize_route: tuple[str, str] | None | bool = False  # False: not looked for yet

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.config.base_url!r}, model={self.config.model!r})"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/") + "/",
                                             timeout=self.config.timeout, headers=self._headers,
                                             transport=self._transport, follow_redirects=False,
                                             trust_env=not self._guarded)  # no proxy that would bypass the check
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def describe(self) -> ModelInfo:
        host = urlsplit(self.config.base_url).hostname
        return ModelInfo(model_id=f"{self.config.kind}:{self.config.model}@{host}", kind="remote", hidden_size=0,
                         n_layers=0, max_length=0, supports_embeddings=self.supports_embeddings, device="remote",
                         dtype="")

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
                wait = exc.wait if exc.wait is not None else random.uniform(0, min(c.max_backoff,
                                                                                   c.backoff * 2 ** attempt))
                log.info("remote %s: %s; retrying in %.2f s", urlsplit(c.base_url).hostname, exc, wait)
                await self._sleep(min(wait, c.max_backoff))
        raise AssertionError("unreachable")

    async def _post_once(self, path: str, body: dict) -> dict:
        try:
            response = await self._http().post(path, json=body)
        except httpx.TimeoutException:
            raise _Retryable("timed out") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        self.usage["requests"] += 1
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            raise RemoteError(f"{self.config.base_url}{path} answered HTTP {response.status_code}: "
                              f"{response.text[:300]}")
        try:
            data = response.json()
        except ValueError:
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
            raise RemoteError(f"{self.config.base_url} returned no top log-probabilities for the first token; the "
                              f"endpoint must support logprobs (top_logprobs) on its {self.config.api} API") from None
        if any(not math.isfinite(v) for v in top.values()):
            top = {t: v for t, v in top.items() if math.isfinite(v)}
        return top

    def _body(self, text: str) -> tuple[str, dict]:
        c = self.config
        if c.api == "chat":
            return "chat/completions", {"model": c.model, "messages": [{"role": "user", "content": text}],
                                        "max_tokens": 1, "temperature": 0, "logprobs": True,
                                        "top_logprobs": min(c.top_logprobs, 20)}
        return "completions", {"model": c.model, "prompt": text, "max_tokens": 1, "temperature": 0,
                               "logprobs": c.top_logprobs}

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
        key = word.strip()
        async with self._tokenizer_lock:
            if key not in self._token_ids:
                ids = await self._tokenize(word)
                if ids is None and self._tokenize_route:
                    return None  # the route failed this time; ask again for the next miss
                self._token_ids[key] = ids[0] if ids else None
            return self._token_ids[key]

    async def _tokenize(self, text: str) -> list[int] | None:
        """`text`'s token ids from the server's tokenizer route, without any special tokens it prepends; None when
        the server has no such route (found once, then remembered)."""
        root = self.config.base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        routes = [("/extras/tokenize", "input"), ("/tokenize", "prompt"), ("/tokenize", "content")]
        if self._tokenize_route is None:
            return None
        for path, field in ([self._tokenize_route] if self._tokenize_route else routes):
            ids = [await self._tokenize_at(root + path, field, t) for t in (text, "")]
            if ids[0] is None or ids[1] is None:
                continue
            self._tokenize_route = (path, field)
            special = len(ids[1]) if ids[0][:len(ids[1])] == ids[1] else 0
            return ids[0][special:] or None
        if not self._tokenize_route:
            self._tokenize_route = None
            log.info("remote %s: no tokenizer route; label words missing from the top list get the floor",
                     urlsplit(self.config.base_url).hostname)
        return None

    async def _tokenize_at(self, url: str, field: str, text: str) -> list[int] | None:
        try:
            response = await self._http().post(url, json={"model": self.config.model, field: text})
        except httpx.HTTPError:
            return None
        self.usage["requests"] += 1
        try:
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            return None
        ok = isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
        return tokens if ok else None

    def _texts(self, request: EvalRequest) -> list[list[str]]:
        """(P, E) model inputs: each candidate's concrete prompt rendered around each example."""
        mode = request.prompt.mode
        if mode == "none":
            concrete = [(request.task, "")]
        elif mode in DISCRETE_MODES:
            try:
                concrete = candidates(request)
            except CandidateError as exc:
                raise RemoteError(str(exc)) from None
        else:
            raise RemoteError(f"prompt mode {mode!r} sends embeddings; this endpoint takes text only (use a "
                              "discrete method: bbpl, rlprompt, icl_search)")
        texts2 = request.examples.texts2 or [None] * len(request.examples)
        return [[render(task, prompt, text, text2)[0] for text, text2 in zip(request.examples.texts, texts2)]
                for task, prompt in concrete]

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        from service.engine.losses import all_losses

        started = time.perf_counter()
        before = dict(self.usage)
        grid = self._texts(request)
        words = tuple(" " + w if not w.startswith(" ") else w for w in request.task.verbalizer)
        unique = sorted({t for row in grid for t in row})
        tasks = [asyncio.ensure_future(self._score_text(t, words)) for t in unique]
        try:
            scored = dict(zip(unique, await asyncio.gather(*tasks)))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        logits = np.asarray([[scored[t] for t in row] for row in grid], dtype=np.float64)
        losses, metric = all_losses(logits, np.asarray(request.examples.labels), request.task.metric)
        if request.loss not in losses:
            raise RemoteError(f"loss {request.loss!r} is unknown; use one of {', '.join(losses)}")
        delta = {k: self.usage[k] - before[k] for k in self.usage}
        info = await self.describe()
        return EvalResult(loss=losses[request.loss], metric=metric, losses=losses,
                          logits=logits if request.return_logits else None, model_id=info.model_id,
                          seconds=time.perf_counter() - started, usage=delta)


class VLLMClient(OpenAIClient):
    """vLLM's OpenAI-compatible server. Text prompts as for any OpenAI-compatible server; BBT's `cat` soft prompts
    through `prompt_embeds` (the whole input as embeddings, a base64 `torch.save` tensor) on the completions API,
    built with `embedder` (a local copy of the served model's input embeddings and tokenizer:
    `service.engine.Engine` over the same weights). With `exact_label_ids`, label words are scored exactly through
    vLLM's `logprob_token_ids` (the label words' first token ids, from `embedder`) instead of the top list."""

    supports_embeddings = True

    def __init__(self, config: EndpointConfig, api_key: str | None = None, *, embedder=None,
                 exact_label_ids: bool = False, **kw):
        super().__init__(config, api_key, **kw)
        self.embedder, self.exact_label_ids = embedder, exact_label_ids

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        if request.prompt.mode != "cat":
            return await super().evaluate(request)
        if self.embedder is None:
            raise RemoteError("soft prompts on vLLM need the served model's embeddings here (embedder)")
        from service.engine.losses import all_losses

        started = time.perf_counter()
        before = dict(self.usage)
        rows, label_ids = self.embedder.input_embeddings(request)  # (P, E) float32 arrays (T, H)
        words = tuple(" " + w for w in request.task.verbalizer)

        async def one(embeds: np.ndarray) -> list[float]:
            body = {"model": self.config.model, "prompt_embeds": encode_embeds(embeds), "max_tokens": 1,
                    "temperature": 0, "logprobs": self.config.top_logprobs}
            if self.exact_label_ids:
                body["logprob_token_ids"] = [int(i) for i in label_ids]
            data = await self._post("completions", body)
            if self.exact_label_ids and "logprob_token_ids" in (data["choices"][0].get("logprobs") or {}):
                found = data["choices"][0]["logprobs"]["logprob_token_ids"][0]
                self.usage["label_scores"] += len(label_ids)
                return [float(found[str(i)]) for i in label_ids]
            scores, missing = label_scores(self._top_logprobs(data), words, self.config.floor_margin)
            self.usage["label_scores"] += len(words)
            self.usage["missing_label_words"] += missing
            return scores

        results = await asyncio.gather(*[one(e) for row in rows for e in row])
        n_cand, n_ex = len(rows), len(rows[0])
        logits = np.asarray(results, dtype=np.float64).reshape(n_cand, n_ex, -1)
        losses, metric = all_losses(logits, np.asarray(request.examples.labels), request.task.metric)
        delta = {k: self.usage[k] - before[k] for k in self.usage}
        return EvalResult(loss=losses[request.loss], metric=metric, losses=losses,
                          logits=logits if request.return_logits else None,
                          model_id=(await self.describe()).model_id, seconds=time.perf_counter() - started,
                          usage=delta)


def encode_embeds(embeds: np.ndarray) -> str:
    """vLLM's prompt_embeds wire format: base64 of `torch.save` of a (T, H) tensor."""
    import torch

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)), buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def make_client(config: EndpointConfig, api_key: str | None = None, *, embedder=None, **kw) -> OpenAIClient:
    if config.kind == "vllm":
        return VLLMClient(config, api_key, embedder=embedder, exact_label_ids=config.exact_label_ids, **kw)
    return OpenAIClient(config, api_key, **kw)


__all__ = ["EndpointConfig", "EndpointConfigError", "GuardedBackend", "OpenAIClient", "RemoteError", "VLLMClient",
           "check_addresses", "check_url", "encode_embeds", "guarded_transport", "label_scores", "make_client",
           "match_label", "with_floor"]
