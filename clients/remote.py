"""Remote LLM APIs behind the `ModelClient` protocol: OpenAI-compatible completions/chat, and vLLM.

Label-word scores come from the log-probabilities of the first generated token (max_tokens 1, temperature 0):
a label's score is the log-probability of the returned top token whose text equals the label word (compared
without surrounding whitespace; case-insensitively only when no token matches exactly), else of the longest
returned token that starts the label word (at least 3 characters, or the whole word when shorter). A label word absent from the returned top list is
scored at the **floor**: the lowest returned log-probability minus `floor_margin` (1 nat by default): the word is
known to be less likely than everything returned. Every floored score is counted (`usage["missing_label_words"]`)
and reported with the job.

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
    allowed = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]
    denied = [ipaddress.ip_network(d, strict=False) for d in deny]
    try:
        infos = resolve(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointConfigError(f"base_url host {host!r} does not resolve ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if any(address in net for net in allowed):
            continue
        if any(address.version == net.version and address in net for net in denied) or not address.is_global:
            raise EndpointConfigError(
                f"base_url host {host!r} resolves to {address}, a private or reserved address this service does "
                f"not call; an operator can allow it with NOGRAD_REMOTE_ALLOW (host names or CIDRs)")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- scoring
def label_scores(top: dict[str, float], words: tuple[str, ...], floor_margin: float) -> tuple[list[float], int]:
    """Label-word log-probabilities from one position's top log-probabilities (token text -> logprob), and how
    many words fell to the floor (see the module docstring)."""
    if not top:
        raise RemoteError("the endpoint returned an empty top_logprobs list")
    stripped = [(t.strip(), lp) for t, lp in top.items()]
    normalized = [(t.lower(), lp) for t, lp in stripped]
    floor = min(top.values()) - floor_margin
    scores, missing = [], 0
    for word in words:
        target = word.strip().lower()
        exact = [lp for t, lp in stripped if t and t == word.strip()] or \
            [lp for t, lp in normalized if t and t == target]
        if exact:
            scores.append(max(exact))
            continue
        need = min(3, len(target))
        prefix = [(len(t), lp) for t, lp in normalized if len(t) >= need and target.startswith(t)]
        if prefix:
            scores.append(max(prefix)[1])
        else:
            scores.append(floor)
            missing += 1
    return scores, missing


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
                 sleep=asyncio.sleep):
        self.config = config
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport, self._sleep = transport, sleep
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(config.concurrency)
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "label_scores": 0, "missing_label_words": 0}

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.config.base_url!r}, model={self.config.model!r})"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/") + "/",
                                             timeout=self.config.timeout, headers=self._headers,
                                             transport=self._transport, follow_redirects=False)
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

    async def _score_text(self, text: str, words: tuple[str, ...]) -> list[float]:
        c = self.config
        if c.api == "chat":
            body = {"model": c.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
                    "temperature": 0, "logprobs": True, "top_logprobs": min(c.top_logprobs, 20)}
            data = await self._post("chat/completions", body)
        else:
            body = {"model": c.model, "prompt": text, "max_tokens": 1, "temperature": 0,
                    "logprobs": c.top_logprobs}
            data = await self._post("completions", body)
        scores, missing = label_scores(self._top_logprobs(data), words, c.floor_margin)
        self.usage["label_scores"] += len(words)
        self.usage["missing_label_words"] += missing
        return scores

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


__all__ = ["EndpointConfig", "EndpointConfigError", "OpenAIClient", "RemoteError", "VLLMClient", "check_url",
           "encode_embeds", "label_scores", "make_client"]
