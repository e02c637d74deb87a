"""The model side of the service: load a model, score populations of prompts in batched forward passes."""

from .engine import Engine
from .errors import ContextLengthError, EngineError, VerbalizerError
from .models import BUILTIN_MODELS, ModelHandle, handle_from_model, load_model, resolve_device

__all__ = ["Engine", "EngineError", "ContextLengthError", "VerbalizerError", "ModelHandle", "load_model",
           "handle_from_model", "resolve_device", "BUILTIN_MODELS"]
