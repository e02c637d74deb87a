"""The one protocol every model endpoint implements (the local engine, the service's queue, remote APIs), and the
synchronous one engines implement for `LocalClient` and the service's workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from .types import EvalRequest, EvalResult, ModelInfo, PromptSpec, TaskSpec, TokenNeighbor


@runtime_checkable
class ModelClient(Protocol):
    """An endpoint that scores candidate prompts. Implementations are safe to await from one event loop.

    `usage` is the running account of what the endpoint charged (remote APIs: requests, tokens, rescored and
    floored label words; empty for endpoints that charge nothing). `aclose` releases connections; calling it twice
    is harmless.
    """

    usage: Mapping[str, int]

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        """Score every candidate of `request` on its examples."""
        ...

    async def describe(self) -> ModelInfo:
        """The model this endpoint serves."""
        ...

    async def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray | None:
        """The prompt tensor candidate `x` stands for ((n, H) for cat/add, (L, n, H) for deep; `x` is z, or the
        (L, d) base for deep), float32; None when this endpoint cannot build it (it does not own the model)."""
        ...

    async def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> list[list[TokenNeighbor]] | None:
        """An optional capability: for a `cat`/`add` soft prompt, the `k` vocabulary tokens whose input embeddings
        are nearest (cosine, fp32) to each of its positions, nearest first; None when this endpoint cannot tell
        (it does not hold the embedding matrix: remote APIs, the service's queue, models without a vocabulary)."""
        ...

    async def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray | None:
        """An optional capability: for a `cat`/`add` soft prompt on a causal LM, the (V, H) float32 input
        embeddings of `task`'s text up to and including the prompt's last position (special tokens, template text
        before `{prompt}`, the prompt), which prepended to the rest of an example's embeddings give exactly the
        model's input (PEFT prompt tuning, vLLM `prompt_embeds`: `nograd.export`); None when this endpoint cannot
        build them (it does not hold the embedding matrix)."""
        ...

    async def aclose(self) -> None:
        """Release the endpoint's connections."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """A model on this machine that scores requests synchronously (`nograd.engine.Engine`, the fake engine).
    Not thread-safe: callers run one evaluation at a time."""

    def evaluate(self, request: EvalRequest) -> EvalResult: ...

    def describe(self) -> ModelInfo: ...

    def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray: ...

    def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> list[list[TokenNeighbor]] | None: ...

    def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray: ...
