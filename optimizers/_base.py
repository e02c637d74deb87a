"""The ask/tell ``Optimizer`` contract shared by every optimizer in this package.

Invariants enforced here for all subclasses:

* ``ask()`` returns a fresh float64 array of shape ``(popsize, dim)``; a second ``ask()`` before ``tell()``
  raises :class:`OptimizerError`.
* ``tell(candidates, losses)`` accepts only the exact matrix returned by the pending ``ask()`` (same shape,
  same values, same order) and ``popsize`` finite losses; otherwise it raises ``ValueError`` and the
  optimizer is left unchanged, so the caller may fix the call and tell again.
* ``generation`` counts completed tells; ``best`` is the lowest loss ever told (first one wins ties).
* ``state_dict()`` is JSON-friendly apart from ``np.ndarray`` values (see :mod:`nograd.optimizers._state`), carries
  ``"version"`` and ``"type"`` and suffices to continue bit-identically via ``from_state``.  Untold (pending)
  candidates are not saved: after loading, ``ask()`` regenerates them bit-identically.
* Instances are not thread-safe: drive one optimizer from one thread (or serialise calls yourself).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

__all__ = ["STATE_VERSION", "Optimizer", "OptimizerError"]

#: Version of the ``state_dict()`` layout; bumped on incompatible changes.
STATE_VERSION = 1


class OptimizerError(RuntimeError):
    """Misuse of the ask/tell protocol, or a state that cannot be restored faithfully."""


def _check_positive_int(name: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_search_space(dim: int, sigma0: float, seed: int, bounds: float | None, x0: np.ndarray | None) -> np.ndarray:
    """Validates the arguments every flat optimizer shares; returns x0 as a float64 array (zeros if None)."""
    for label, value in (("sigma0", sigma0), ("bounds", bounds)):
        if value is None and label == "bounds":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{label} must be a finite positive number, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    x0_arr = np.zeros(dim) if x0 is None else np.array(x0, dtype=np.float64)
    if x0_arr.shape != (dim,) or not np.all(np.isfinite(x0_arr)):
        raise ValueError(f"x0 must be a finite array of shape ({dim},), got shape {x0_arr.shape}")
    if bounds is not None and np.any(np.abs(x0_arr) > bounds):
        raise ValueError(f"x0 must lie within [-{bounds}, {bounds}]")
    return x0_arr


class Optimizer(abc.ABC):
    """Minimiser with an ask/tell interface and explicit, pickle-free state.

    Subclasses implement :meth:`_ask`, :meth:`_tell`, :attr:`name`, :attr:`mean`, :meth:`state_dict` and
    :meth:`from_state`; the public :meth:`ask`/:meth:`tell` enforce the protocol (see module docstring).

    Args:
        dim: dimension of one candidate (>= 1).
        popsize: candidates per generation (>= 1).
        budget: optional number of loss evaluations; :meth:`should_stop` turns true once
            ``generation * popsize >= budget``.
        max_generations: optional number of tells after which :meth:`should_stop` turns true.
    """

    #: Registry name of the class (``"cma"``, ``"deep"``; nevergrad instances refine it via :attr:`name`).
    type_name: ClassVar[str] = ""

    def __init__(
        self, dim: int, popsize: int, *, budget: int | None = None, max_generations: int | None = None
    ) -> None:
        _check_positive_int("dim", dim)
        _check_positive_int("popsize", popsize)
        _check_positive_int("budget", budget, allow_none=True)
        _check_positive_int("max_generations", max_generations, allow_none=True)
        self._dim = int(dim)
        self._popsize = int(popsize)
        self._budget = None if budget is None else int(budget)
        self._max_generations = None if max_generations is None else int(max_generations)
        self._generation = 0
        self._pending: np.ndarray | None = None
        self._best_x: np.ndarray | None = None
        self._best_f = math.inf
        self._restore_notes: list[str] = []

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension of one candidate."""
        return self._dim

    @property
    def popsize(self) -> int:
        """Number of candidates returned by each :meth:`ask`."""
        return self._popsize

    @property
    def generation(self) -> int:
        """Number of completed :meth:`tell` calls."""
        return self._generation

    @property
    def budget(self) -> int | None:
        """Evaluation budget given at construction, or None."""
        return self._budget

    @property
    def max_generations(self) -> int | None:
        """Generation limit given at construction, or None."""
        return self._max_generations

    @property
    def pending(self) -> bool:
        """True between an :meth:`ask` and its :meth:`tell`."""
        return self._pending is not None

    @property
    def restore_notes(self) -> tuple[str, ...]:
        """What :meth:`from_state` had to say about the restore (e.g. a replay equal to the saved run only up to
        rounding); empty for a bit-identical restore and for an optimizer that was not restored."""
        return tuple(self._restore_notes)

    @property
    def best(self) -> tuple[np.ndarray | None, float]:
        """``(candidate, loss)`` of the lowest loss ever told; ``(None, inf)`` before the first tell."""
        return (None if self._best_x is None else self._best_x.copy()), self._best_f

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Registry name this optimizer is stored under (``state_dict()["type"]``)."""

    @property
    def step_size(self) -> float | None:
        """The method's current overall step size, for dashboards (CMA-ES's sigma); None where it has none."""
        return None

    @property
    @abc.abstractmethod
    def mean(self) -> np.ndarray:
        """The optimizer's current point estimate of the optimum (a fresh array)."""

    def should_stop(self) -> bool:
        """True once the budget or generation limit is used up, or the method itself has converged.

        Asking past this point is still allowed; stopping is the caller's decision.
        """
        if self._budget is not None and self._generation * self._popsize >= self._budget:
            return True
        if self._max_generations is not None and self._generation >= self._max_generations:
            return True
        return self._method_should_stop()

    def _method_should_stop(self) -> bool:
        """Method-specific convergence test; must not change any state that affects future asks."""
        return False

    # ------------------------------------------------------------------ ask / tell
    def ask(self) -> np.ndarray:
        """Proposes the next generation.

        Returns:
            A new float64 array of shape ``(popsize, dim)``; the caller may modify it freely.

        Raises:
            OptimizerError: if the previous ``ask()`` has not been answered by ``tell()``.
        """
        if self._pending is not None:
            raise OptimizerError(
                f"{self.name}: ask() called twice without tell(); call tell(candidates, losses) with the "
                "candidates of the previous ask() first"
            )
        x = np.array(self._ask(), dtype=np.float64)
        if x.shape != (self._popsize, self._dim):
            raise OptimizerError(
                f"{self.name}: internal ask produced shape {x.shape}, expected {(self._popsize, self._dim)}"
            )
        self._pending = x
        return x.copy()

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Reports the losses of the candidates returned by the pending :meth:`ask`.

        Args:
            candidates: exactly the array the pending ``ask()`` returned, shape ``(popsize, dim)``.
            losses: ``popsize`` finite losses (lower is better), in the order of ``candidates``; shape
                ``(popsize,)`` (``(popsize, 1)`` is accepted too).

        Raises:
            OptimizerError: if there is no pending ``ask()``.
            ValueError: on a shape mismatch, candidates that differ from the asked ones, or non-finite
                losses.  The optimizer is unchanged and the ask stays pending.
        """
        if self._pending is None:
            raise OptimizerError(f"{self.name}: tell() without a pending ask(); call ask() first")
        x = np.asarray(candidates, dtype=np.float64)
        if x.shape != self._pending.shape:
            raise ValueError(
                f"{self.name}: candidates must have shape {self._pending.shape} "
                f"(popsize, dim) as returned by ask(), got {x.shape}"
            )
        if not np.array_equal(x, self._pending):
            raise ValueError(
                f"{self.name}: candidates differ from those returned by the last ask(); pass "
                "the asked array unmodified and in the same order"
            )
        f = np.asarray(losses, dtype=np.float64)
        if f.size != self._popsize or f.ndim > 2:
            raise ValueError(f"{self.name}: losses must have shape ({self._popsize},), got {f.shape}")
        f = f.reshape(self._popsize)
        if not np.all(np.isfinite(f)):
            bad = np.flatnonzero(~np.isfinite(f)).tolist()
            raise ValueError(
                f"{self.name}: losses must be finite (non-finite at indices {bad}); replace failed "
                "evaluations by a finite penalty (e.g. a large loss) before calling tell()"
            )
        f = f.copy()
        self._tell(self._pending, f)
        self._update_best(self._pending, f)
        self._pending = None
        self._generation += 1

    def _update_best(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        i = int(np.argmin(losses))
        if losses[i] < self._best_f:
            self._best_f = float(losses[i])
            self._best_x = candidates[i].copy()

    @abc.abstractmethod
    def _ask(self) -> np.ndarray:
        """Returns the next ``(popsize, dim)`` candidates (called only when nothing is pending)."""

    @abc.abstractmethod
    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Updates the method with validated candidates (the pending ask) and finite losses."""

    # ------------------------------------------------------------------ state
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue, as JSON-friendly values and ``np.ndarray``s.

        Always contains ``"version"`` (== ``STATE_VERSION``) and ``"type"`` (== :attr:`name`).  Store it with
        :func:`nograd.optimizers.state_to_json`, or as arrays (``np.savez`` after flattening the dict).
        """

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: Mapping[str, Any]) -> Optimizer:
        """Rebuilds an optimizer whose future asks are bit-identical to the one that wrote ``state``."""

    @staticmethod
    def _check_state(state: Mapping[str, Any], type_ok: bool) -> None:
        """Validates the envelope of a state dict (version and type)."""
        if not isinstance(state, Mapping):
            raise OptimizerError(f"optimizer state must be a dict, got {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise OptimizerError(
                f"unsupported optimizer state version {state.get('version')!r}; this code reads version {STATE_VERSION}"
            )
        if not type_ok:
            raise OptimizerError(f"optimizer state of type {state.get('type')!r} cannot be loaded here")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self._dim}, popsize={self._popsize}, "
            f"generation={self._generation}, best_loss={self._best_f})"
        )
