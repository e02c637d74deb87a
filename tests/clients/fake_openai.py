"""A small OpenAI-compatible server for the remote client's fault cases, run by uvicorn on a free port.

It scores the first generated token from the prompt's text: a label word's log-probability grows with the number
of times the prompt mentions it, so prompts that name the right word score better. `faults` is a list of actions
consumed one per request: "429", "500", "timeout", "malformed", "nologprobs", "drop:<word>" (omit a word from
the top list); with none left, requests succeed.

`POST /tokenize` (vLLM's shape: {"model", "prompt"} -> {"tokens"}, with a BOS id 1 in front) gives each word of
WORDS, with or without its leading space, the id 100 + its index, when `tokenizer` is on. `logit_bias` makes the
biased word the generated token; its
log-probability is reported before the bias (`bias_reporting` "raw", as real servers do), after it ("biased"), or
the bias is ignored ("ignore").
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from procs import free_port

WORDS = (" great", " bad", " positive", " negative", " the", " a", " it", " film")
BOS = 1


class FakeOpenAI:
    def __init__(self, retry_after: str | None = "0.01", sleep: float = 3.0):
        self.faults: list[str] = []
        self.requests: list[dict] = []
        self.tokenize_requests: list[dict] = []
        self.headers: list[dict] = []
        self.retry_after, self.sleep = retry_after, sleep
        self.tokenizer, self.bias_reporting = True, "raw"
        self.app = FastAPI()
        self.app.post("/tokenize")(self._tokenize)
        self.app.post("/v1/completions")(self._completions)
        self.app.post("/v1/chat/completions")(self._chat)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    @staticmethod
    def top(prompt: str, drop: str | None = None, bias: dict[str, float] | None = None) -> dict[str, float]:
        text = prompt.lower()
        raw = {w: 1.0 + 0.5 * text.count(w.strip()) + (bias or {}).get(w, 0.0) for w in WORDS}
        total = math.log(sum(math.exp(v) for v in raw.values()) + 20.0)  # mass on tokens not listed
        return {w: v - total for w, v in raw.items() if w != drop}

    async def _tokenize(self, request: Request):
        body = await request.json()
        self.tokenize_requests.append(body)
        if not self.tokenizer:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        text = body["prompt"]
        word = text if text in WORDS else " " + text  # a word starts the same token with or without its space
        ids = [BOS] + ([100 + WORDS.index(word)] if word in WORDS else [7] * len(text.split()))
        return {"tokens": ids, "count": len(ids)}

    def _answer(self, prompt: str, body: dict) -> tuple[str, float, dict[str, float]]:
        """The generated token, its reported log-probability and the (untruncated) top list."""
        bias = {WORDS[int(i) - 100]: float(b) for i, b in (body.get("logit_bias") or {}).items()}
        top = self.top(prompt, self._drop)
        if not bias or self.bias_reporting == "ignore":
            token = max(top, key=top.get)
            return token, top[token], top
        token = max(self.top(prompt, bias=bias).items(), key=lambda kv: kv[1])[0]
        if self.bias_reporting == "biased":  # the biased word tops the list now: nothing to drop
            top = self.top(prompt, bias=bias)
            return token, top[token], top
        return token, self.top(prompt)[token], top

    async def _fault(self, request: Request, body: dict) -> Response | None:
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        fault = self.faults.pop(0) if self.faults else None
        if fault == "429":
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return JSONResponse({"error": "rate limited"}, status_code=429, headers=headers)
        if fault == "500":
            return JSONResponse({"error": "boom"}, status_code=500)
        if fault == "timeout":
            await asyncio.sleep(self.sleep)
        if fault == "malformed":
            return Response("{not json", media_type="application/json")
        if fault == "nologprobs":
            return JSONResponse({"choices": [{"text": " great", "logprobs": None}]})
        self._drop = fault[5:] if fault and fault.startswith("drop:") else None
        return None

    async def _completions(self, request: Request):
        body = await request.json()
        if (early := await self._fault(request, body)) is not None:
            return early
        token, value, top = self._answer(body["prompt"], body)
        top = dict(sorted(top.items(), key=lambda kv: -kv[1])[: int(body.get("logprobs") or 5)])
        return {
            "choices": [
                {"text": token, "logprobs": {"tokens": [token], "token_logprobs": [value], "top_logprobs": [top]}}
            ],
            "usage": {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": 1},
        }

    async def _chat(self, request: Request):
        body = await request.json()
        if (early := await self._fault(request, body)) is not None:
            return early
        token, value, top = self._answer(body["messages"][-1]["content"], body)
        entries = [{"token": t, "logprob": v} for t, v in sorted(top.items(), key=lambda kv: -kv[1])]
        return {
            "choices": [
                {
                    "message": {"content": token},
                    "logprobs": {
                        "content": [
                            {"token": token, "logprob": value, "top_logprobs": entries[: body.get("top_logprobs", 5)]}
                        ]
                    },
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1},
        }
