"""Model endpoints behind one protocol (`ModelClient`) and the evaluation contract they share: plain-data request
and result types, losses, and the one renderer of templates. The local engine (`LocalClient`), the service's queue
(`nograd.service.queue.QueueClient`) and remote OpenAI-compatible and vLLM servers (`nograd.clients.kinds`)
implement it. Nothing here imports torch or any higher layer of nograd."""

from .local import LocalClient
from .protocol import Evaluator, ModelClient
from .types import (
    DISCRETE_MODES,
    LOSSES,
    METRICS,
    PROMPT_MODES,
    SOFT_MODES,
    EvalRequest,
    EvalResult,
    Examples,
    InvalidRequest,
    ModelInfo,
    ProjectionSpec,
    PromptSpec,
    TaskSpec,
    TokenNeighbor,
)

__all__ = [
    "DISCRETE_MODES",
    "LOSSES",
    "METRICS",
    "PROMPT_MODES",
    "SOFT_MODES",
    "EvalRequest",
    "EvalResult",
    "Evaluator",
    "Examples",
    "InvalidRequest",
    "LocalClient",
    "ModelClient",
    "ModelInfo",
    "ProjectionSpec",
    "PromptSpec",
    "TaskSpec",
    "TokenNeighbor",
]
