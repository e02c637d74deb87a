"""A small OpenAI-compatible server for the remote client's fault cases, run by uvicorn on a free port.

It scores the first generated token from the prompt's text: a label word's log-probability grows with the number
of times the prompt mentions it, so prompts that name the right word score better. `faults` is a list of actions
consumed one per request: "429", "500", "timeout", "malformed", "nologprobs", "drop:<word>" (omit a word from
the top list); with none left, requests succeed.
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


class FakeOpenAI:
    def __init__(self, retry_after: str | None = "0.01", sleep: float = 3.0):
        self.faults: list[str] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.retry_after, self.sleep = retry_after, sleep
        self.app = FastAPI()
        self.app.post("/v1/completions")(self._completions)
        self.app.post("/v1/chat/completions")(self._chat)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
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
    def top(prompt: str, drop: str | None = None) -> dict[str, float]:
        text = prompt.lower()
        raw = {w: 1.0 + 0.5 * text.count(w.strip()) for w in WORDS}
        total = math.log(sum(math.exp(v) for v in raw.values()) + 20.0)  # mass on tokens not listed
        return {w: v - total for w, v in raw.items() if w != drop}

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
        top = self.top(body["prompt"], self._drop)
        top = dict(sorted(top.items(), key=lambda kv: -kv[1])[: int(body.get("logprobs") or 5)])
        return {"choices": [{"text": max(top, key=top.get), "logprobs": {"top_logprobs": [top]}}],
                "usage": {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": 1}}

    async def _chat(self, request: Request):
        body = await request.json()
        if (early := await self._fault(request, body)) is not None:
            return early
        top = self.top(body["messages"][-1]["content"], self._drop)
        entries = [{"token": t, "logprob": v} for t, v in sorted(top.items(), key=lambda kv: -kv[1])]
        return {"choices": [{"message": {"content": entries[0]["token"]},
                             "logprobs": {"content": [{"token": entries[0]["token"], "logprob": entries[0]["logprob"],
                                                       "top_logprobs": entries[: body.get("top_logprobs", 5)]}]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
