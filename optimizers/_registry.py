"""Name -> optimizer factories and state dispatch.

Names: ``"cma"`` (:class:`~nograd.optimizers.CMA`), ``"ng:<Name>"`` for any key of
``nevergrad.optimizers.registry`` (:class:`~nograd.optimizers.Nevergrad`) and ``"deep"``
(:class:`~nograd.optimizers.DivideAndConquer`, built with :func:`make_deep_optimizer`); states of type ``"bbpl"``
are :class:`~nograd.optimizers.PolicyGradient`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import Optimizer, OptimizerError
from ._categorical import PolicyGradient
from ._deep import DivideAndConquer
from ._flat import flat_optimizer_from_state, is_flat, make_flat_optimizer
from ._nevergrad import NG_PREFIX, nevergrad_names

__all__ = ["available_optimizers", "make_deep_optimizer", "make_optimizer", "optimizer_from_state"]


def available_optimizers(include_nevergrad: bool = True) -> list[str]:
    """Names accepted by :func:`make_optimizer`: ``"cma"``, ``"deep"`` and (optionally) every ``"ng:<Name>"``."""
    names = ["cma", "deep"]
    if include_nevergrad:
        names += [NG_PREFIX + n for n in nevergrad_names()]
    return names


def make_optimizer(
    name: str,
    *,
    dim: int,
    popsize: int = 20,
    sigma0: float = 1.0,
    seed: int = 0,
    bounds: float | None = None,
    budget: int | None = None,
    **kw: Any,
) -> Optimizer:
    """Builds an optimizer by registry name.

    Args:
        name: ``"cma"``, ``"ng:<Name>"`` or ``"deep"`` (then ``n_layers`` is required in ``kw`` and ``dim``
            is the per-layer dimension; see :func:`make_deep_optimizer`).
        dim: search dimension.
        popsize: candidates per ask.
        sigma0: initial step size / mutation scale.
        seed: non-negative int; equal seeds give bit-identical runs.
        bounds: optional symmetric box ``[-bounds, bounds]``.
        budget: optional number of loss evaluations (drives :meth:`Optimizer.should_stop`; nevergrad also
            uses it to pick its algorithm).
        **kw: class-specific options (``x0``, ``max_generations``, CMA ``options``; deep ``n_layers``,
            ``inner``, ``inner_options``).

    Raises:
        ValueError: for an unknown name (the message lists valid names) or invalid arguments.
    """
    common: dict[str, Any] = dict(dim=dim, popsize=popsize, sigma0=sigma0, seed=seed, bounds=bounds, budget=budget)
    if is_flat(name):
        return make_flat_optimizer(name, **common, **kw)
    if name == "deep":
        if "n_layers" not in kw:
            raise ValueError("make_optimizer('deep', ...) needs n_layers=<number of layers>")
        return make_deep_optimizer(**common, **kw)
    raise ValueError(
        f"unknown optimizer {name!r}; valid names: 'cma', 'deep', 'ng:<Name>' "
        "(e.g. 'ng:NGOpt', 'ng:TBPSA', 'ng:CMA'; see available_optimizers())"
    )


def make_deep_optimizer(
    n_layers: int,
    inner: str = "cma",
    *,
    dim: int,
    popsize: int = 20,
    sigma0: float = 1.0,
    seed: int = 0,
    bounds: float | None = None,
    budget: int | None = None,
    **kw: Any,
) -> DivideAndConquer:
    """Builds a :class:`~nograd.optimizers.DivideAndConquer` (BBTv2 layer-wise search) over ``n_layers`` x ``dim``."""
    return DivideAndConquer(
        n_layers=n_layers,
        dim=dim,
        popsize=popsize,
        inner=inner,
        sigma0=sigma0,
        seed=seed,
        bounds=bounds,
        budget=budget,
        **kw,
    )


def optimizer_from_state(state: Mapping[str, Any]) -> Optimizer:
    """Rebuilds any optimizer from ``state_dict()`` output, dispatching on ``state["type"]``.

    Raises:
        OptimizerError: for an unknown type or version, or a state that cannot be replayed faithfully.
    """
    if not isinstance(state, Mapping):
        raise OptimizerError(f"optimizer state must be a dict, got {type(state).__name__}")
    kind = state.get("type")
    if kind == DivideAndConquer.type_name:
        return DivideAndConquer.from_state(state)
    if kind == PolicyGradient.type_name:
        return PolicyGradient.from_state(state)
    if isinstance(kind, str) and is_flat(kind):
        return flat_optimizer_from_state(state)
    raise OptimizerError(f"unknown optimizer state type {kind!r}; expected 'cma', 'deep', 'bbpl' or 'ng:<Name>'")
