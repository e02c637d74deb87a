"""The in-process endpoint: an engine on this machine behind the `ModelClient` protocol."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from .protocol import Evaluator
from .types import EvalRequest, EvalResult, ModelInfo, PromptSpec, TaskSpec, TokenNeighbor


class LocalClient:
    """Runs an `Evaluator` (`nograd.engine.Engine`, the fake engine) in a worker thread so the event loop stays
    responsive; one evaluation at a time (the engine's model hooks allow one forward at a time)."""

    usage: Mapping[str, int] = MappingProxyType({})  # an engine here charges nothing

    def __init__(self, engine: Evaluator):
        self.engine = engine
        self._lock = threading.Lock()

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        return await asyncio.to_thread(self._locked, self.engine.evaluate, request)

    async def describe(self) -> ModelInfo:
        return self.engine.describe()

    async def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray:
        return await asyncio.to_thread(self._locked, self.engine.materialize, spec, x)

    async def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> list[list[TokenNeighbor]] | None:
        return await asyncio.to_thread(self._locked, self.engine.nearest_tokens, spec, x, k)

    async def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray:
        return await asyncio.to_thread(self._locked, self.engine.virtual_tokens, task, spec, x)

    async def aclose(self) -> None:
        return None

    def _locked(self, fn, *args):
        with self._lock:
            return fn(*args)
