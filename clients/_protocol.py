"""The one protocol every model endpoint implements (local engine, queue-backed, remote APIs)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .types import EvalRequest, EvalResult, ModelInfo


@runtime_checkable
class ModelClient(Protocol):
    """An endpoint that scores candidate prompts. Implementations must be safe to await from one event loop."""

    async def evaluate(self, request: EvalRequest) -> EvalResult:
        """Score every candidate of `request` on its examples."""
        ...

    async def describe(self) -> ModelInfo:
        """The model this endpoint serves."""
        ...
