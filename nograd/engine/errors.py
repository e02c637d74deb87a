"""Errors raised by the evaluation engine. Every message names what is wrong and how to fix it."""

from nograd.clients.types import InvalidRequest


class EngineError(InvalidRequest):
    """Base class: bad model, task, prompt or candidate input given to the engine."""


class ContextLengthError(EngineError):
    """An example (with prompt and demonstrations) does not fit in the model's context."""


class VerbalizerError(EngineError):
    """Label words the model cannot tell apart (two labels share a first token) or cannot encode."""
