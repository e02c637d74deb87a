"""Flat (single-vector) optimizers by name: ``"cma"`` (:class:`~nograd.optimizers.CMA`) and ``"ng:<Name>"``
(:class:`~nograd.optimizers.Nevergrad`); the building blocks of the deep optimizer and of the registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import Optimizer, OptimizerError
from ._cma import CMA
from ._nevergrad import NG_PREFIX, Nevergrad

__all__ = ["flat_optimizer_from_state", "is_flat", "make_flat_optimizer"]


def is_flat(name: str) -> bool:
    """Whether `name` is ``"cma"`` or ``"ng:<Name>"``."""
    return name == "cma" or name.startswith(NG_PREFIX)


def make_flat_optimizer(name: str, **options: Any) -> Optimizer:
    """``CMA(**options)`` or ``Nevergrad(name, **options)``; raises ValueError for any other name."""
    if name == "cma":
        return CMA(**options)
    if name.startswith(NG_PREFIX):
        return Nevergrad(name, **options)
    raise ValueError(f"unknown flat optimizer {name!r}; use 'cma' or 'ng:<Name>' (e.g. 'ng:NGOpt')")


def flat_optimizer_from_state(state: Mapping[str, Any]) -> Optimizer:
    """Rebuilds a flat optimizer from its ``state_dict()``."""
    kind = state.get("type")
    if kind == "cma":
        return CMA.from_state(state)
    if isinstance(kind, str) and kind.startswith(NG_PREFIX):
        return Nevergrad.from_state(state)
    raise OptimizerError(f"optimizer state of type {kind!r} is not a flat optimizer ('cma' or 'ng:<Name>')")
