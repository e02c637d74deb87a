"""The model side: load a model, score populations of prompts in batched forward passes (`Engine`), the fake
engine of tests and benchmarks, and the one factory that builds either (`build_engine`).

Names are imported lazily: `nograd.engine.fake` is numpy-only, and processes that only need the fake engine or
the defaults (the API without an embedded worker) must not pay the torch/transformers import.
"""

from __future__ import annotations

import importlib

#: Activation memory one forward pass may use unless a worker or run sets another cap. Scores do not depend on
#: it (`Engine` runs fixed-shape micro-batches); it decides how many of them run in one pass.
DEFAULT_MEMORY_CAP_MB = 256.0
#: Examples per micro-batch: the fixed shape every score is computed in (recorded with saved prompts).
MICRO_BATCH = 8

_EXPORTS = {
    "Engine": ".engine",
    "EngineError": ".errors",
    "ContextLengthError": ".errors",
    "VerbalizerError": ".errors",
    "ModelHandle": ".models",
    "load_model": ".models",
    "handle_from_model": ".models",
    "resolve_device": ".models",
    "BUILTIN_MODELS": ".models",
    "FakeEngine": ".fake",
    "build_engine": ".factory",
    "shared_engine": ".factory",
    "shared_handle": ".factory",
}

__all__ = sorted([*_EXPORTS, "DEFAULT_MEMORY_CAP_MB", "MICRO_BATCH"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nograd.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
