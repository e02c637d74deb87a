"""Any optimizer of ``nevergrad.optimizers.registry``, behind the ask/tell contract (names ``"ng:<Name>"``).

Determinism and isolation:

* nevergrad draws from the global RNG when its modules are imported; the lazy import restores the
  caller's global state afterwards.
* The parametrization draws from ``np.random.RandomState(seed)`` (nevergrad's own per-optimizer RNG).
* Some nevergrad optimizers also call the *global* ``np.random`` functions.  Every call into nevergrad
  (construction, ask, tell, recommend) therefore runs in a sandbox: the caller's global ``np.random``
  state is saved, a private legacy state derived from ``seed`` is installed, and afterwards the private
  state is kept and the caller's state restored.  The caller's global RNG is never consumed or
  perturbed, and nevergrad sees the same "global" stream in a replay.  The sandbox holds a module lock,
  so two wrappers never interleave; other threads using ``np.random`` concurrently are not protected, and
  thread-based nevergrad optimizers (scipy recasts such as ``SQP``) run work outside the sandbox.
* :attr:`Nevergrad.mean` (``provide_recommendation()``) is computed right after construction and after
  every tell and cached, so reading it never changes the sequence of calls into nevergrad.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ._base import OptimizerError, check_search_space
from ._replay import ReplayOptimizer

__all__ = ["NG_PREFIX", "Nevergrad", "check_nevergrad_name", "nevergrad_names"]

NG_PREFIX = "ng:"
_SANDBOX_LOCK = threading.RLock()
_SANDBOX_TAG = 0x6E67  # "ng": separates the sandbox stream from the parametrization's RandomState(seed)


def _ng() -> Any:
    """Imports nevergrad lazily (~1.5 s), undoing the global ``np.random`` draws its modules make at import."""
    with _SANDBOX_LOCK:
        outer = np.random.get_state()
        try:
            import nevergrad
        finally:
            np.random.set_state(outer)
    return nevergrad


def nevergrad_names() -> list[str]:
    """Sorted names of ``nevergrad.optimizers.registry`` (without the ``ng:`` prefix)."""
    return sorted(_ng().optimizers.registry)


def _strip(name: str) -> str:
    return name[len(NG_PREFIX) :] if name.startswith(NG_PREFIX) else name


def check_nevergrad_name(name: str) -> str:
    """The registry key of ``name`` (with or without ``"ng:"``); ValueError with close matches if unknown."""
    short = _strip(str(name))
    registry = _ng().optimizers.registry
    if short not in registry:
        close = difflib.get_close_matches(short, list(registry), n=5)
        common = ["NGOpt", "TBPSA", "CMA", "DE", "OnePlusOne", "PSO"]
        raise ValueError(
            f"unknown nevergrad optimizer {name!r}; did you mean one of "
            f"{[NG_PREFIX + n for n in close or common]}? "
            "(all names: nograd.optimizers.nevergrad_names())"
        )
    return short


class Nevergrad(ReplayOptimizer):
    """A nevergrad optimizer on ``ng.p.Array(shape=(dim,))``, asked ``popsize`` candidates at a time.

    Args:
        name: a key of ``nevergrad.optimizers.registry``, with or without the ``"ng:"`` prefix.
        dim: search dimension.
        popsize: candidates per generation; also nevergrad's ``num_workers``.
        sigma0: mutation scale of the parametrization (``set_mutation(sigma=sigma0)``).
        seed: non-negative int seeding the parametrization RNG and the global-RNG sandbox.
        bounds: if given, the parametrization is bounded to ``[-bounds, bounds]``.
        x0: initial value, shape ``(dim,)``; zeros by default.
        budget: number of evaluations handed to nevergrad (required by budget-dependent optimizers such
            as ``NGOpt``) and limit for :meth:`should_stop`.
        max_generations: optional generation limit for :meth:`should_stop`.
    """

    type_name = "ng"

    def __init__(
        self,
        name: str,
        dim: int,
        popsize: int = 20,
        sigma0: float = 1.0,
        seed: int = 0,
        bounds: float | None = None,
        x0: np.ndarray | list[float] | None = None,
        budget: int | None = None,
        max_generations: int | None = None,
    ) -> None:
        super().__init__(dim, popsize, budget=budget, max_generations=max_generations)
        ng = _ng()
        short = check_nevergrad_name(name)
        x0_arr = check_search_space(self.dim, sigma0, seed, bounds, x0)
        self._ng_name = short
        self._sigma0 = float(sigma0)
        self._seed = int(seed)
        self._bounds = None if bounds is None else float(bounds)
        self._x0 = x0_arr
        sandbox_seed = np.random.SeedSequence([self._seed, _SANDBOX_TAG]).generate_state(8)
        self._global_state: Any = np.random.RandomState(sandbox_seed).get_state()
        with self._sandbox():
            param = ng.p.Array(init=x0_arr.copy()).set_mutation(sigma=self._sigma0)
            if self._bounds is not None:
                param.set_bounds(-self._bounds, self._bounds)
            param.random_state = np.random.RandomState(self._seed)
            self._opt = ng.optimizers.registry[short](parametrization=param, budget=budget, num_workers=self.popsize)
        ngopt_base = getattr(ng.optimizers, "NGOptBase", None)
        if budget is None and ngopt_base is not None and isinstance(self._opt, ngopt_base):
            raise ValueError(
                f"nevergrad optimizer {short!r} chooses its algorithm from the budget; pass "
                "budget=<number of loss evaluations>"
            )
        self._asked: list[Any] | None = None
        self._recommendation = self._recommend()

    @contextlib.contextmanager
    def _sandbox(self) -> Iterator[None]:
        """Runs nevergrad code against this optimizer's private global ``np.random`` state."""
        with _SANDBOX_LOCK:
            outer = np.random.get_state()
            np.random.set_state(self._global_state)
            try:
                yield
            finally:
                self._global_state = np.random.get_state()
                np.random.set_state(outer)

    def _recommend(self) -> np.ndarray:
        with self._sandbox():
            value = self._opt.provide_recommendation().value
        return np.array(value, dtype=np.float64).reshape(self.dim)

    @property
    def name(self) -> str:
        """``"ng:<Name>"``."""
        return NG_PREFIX + self._ng_name

    @property
    def optimizer(self) -> Any:
        """The wrapped nevergrad optimizer (read-only use: calling it directly breaks replay)."""
        return self._opt

    @property
    def mean(self) -> np.ndarray:
        """nevergrad's recommendation after the last tell (``provide_recommendation().value``)."""
        return self._recommendation.copy()

    def _ask(self) -> np.ndarray:
        try:
            with self._sandbox():
                asked = [self._opt.ask() for _ in range(self.popsize)]
        except AssertionError as exc:  # nevergrad asserts preconditions (e.g. a budget) deep inside
            raise OptimizerError(
                f"nevergrad optimizer {self._ng_name!r} failed in ask(): {exc!r}; "
                "it may need budget=... or other settings"
            ) from exc
        self._asked = asked
        return np.stack([np.asarray(c.value, dtype=np.float64).reshape(self.dim) for c in asked])

    def _library_tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        assert self._asked is not None
        with self._sandbox():
            for cand, loss in zip(self._asked, losses.tolist(), strict=True):
                self._opt.tell(cand, loss)
        self._asked = None
        self._recommendation = self._recommend()

    # ------------------------------------------------------------------ state
    @classmethod
    def _type_ok(cls, type_name: Any) -> bool:
        return isinstance(type_name, str) and type_name.startswith(NG_PREFIX)

    def _config(self) -> dict[str, Any]:
        return {
            "name": self._ng_name,
            "dim": self.dim,
            "popsize": self.popsize,
            "sigma0": self._sigma0,
            "seed": self._seed,
            "bounds": self._bounds,
            "x0": self._x0.tolist(),
            "budget": self.budget,
            "max_generations": self.max_generations,
        }

    @classmethod
    def _from_config(cls, type_name: str, config: Mapping[str, Any]) -> Nevergrad:
        cfg = dict(config)
        if NG_PREFIX + str(cfg.get("name")) != type_name:
            raise OptimizerError(f"state type {type_name!r} does not match its config name {cfg.get('name')!r}")
        return cls(**cfg)

    @staticmethod
    def _library_versions() -> dict[str, str]:
        import cma  # nevergrad's CMA family delegates to pycma

        return {"nevergrad": str(_ng().__version__), "cma": str(cma.__version__), "numpy": np.__version__}
