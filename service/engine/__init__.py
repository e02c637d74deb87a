"""The model side of the service: load a model, score populations of prompts in batched forward passes.

Names are imported lazily: `service.engine.losses` and `service.engine.fake` are numpy-only, and the API process
(which scores results with the losses) must not pay the torch/transformers import for them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Engine": ".engine", "EngineError": ".errors", "ContextLengthError": ".errors", "VerbalizerError": ".errors",
    "ModelHandle": ".models", "load_model": ".models", "handle_from_model": ".models", "resolve_device": ".models",
    "BUILTIN_MODELS": ".models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'service.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
