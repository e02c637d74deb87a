"""Model endpoints behind one protocol (`ModelClient`): the local engine now; queue-backed and remote APIs later."""

from ._protocol import ModelClient
from .local import LocalClient
from .types import (LOSSES, METRICS, EvalRequest, EvalResult, Examples, ModelInfo, ProjectionSpec, PromptSpec,
                    TaskSpec)

__all__ = ["ModelClient", "LocalClient", "EvalRequest", "EvalResult", "Examples", "ModelInfo", "ProjectionSpec",
           "PromptSpec", "TaskSpec", "LOSSES", "METRICS"]
