"""CMA-ES via pycma (``cma.CMAEvolutionStrategy``), deterministic and side-effect free.

Determinism without global state: pycma draws all its Gaussian samples through the ``randn`` option, which
here is backed by a private ``np.random.Generator(np.random.PCG64(seed))``; the ``seed`` option is set to
``nan`` (pycma's "do nothing"), so pycma never calls ``np.random.seed`` and never touches the global
``np.random`` state.  File logging and console output are off (``verb_log=0``, ``verb_disp=0``,
``verbose=-9``), so nothing is written to ``outcmaes/``.  Termination tests that misfire on noisy or
plateau-shaped losses (``tolfun``, ``tolfunhist``, ``tolflatfitness``, ``tolstagnation``,
``tolxstagnation``) are disabled; numerical-failure tests (``tolx``, ``tolconditioncov``, ``tolupsigma``,
``tolfacupx``) stay on and show up in :meth:`CMA.should_stop`.  The stop test runs once after every tell
(it has side effects on pycma's flat-fitness counter), so calling ``should_stop`` never changes the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import check_search_space
from ._replay import ReplayOptimizer

with warnings.catch_warnings():  # pycma warns at import when matplotlib is missing; plotting is unused here
    warnings.filterwarnings("ignore", message=".*matplotlib.*")
    import cma

__all__ = ["CMA"]

#: pycma options this wrapper controls; passing them in ``options`` is an error.
_RESERVED = frozenset(
    {
        "popsize",
        "seed",
        "randn",
        "bounds",
        "verbose",
        "verb_log",
        "verb_disp",
        "verb_filenameprefix",
        "verb_plot",
        "verb_append",
        "maxiter",
        "maxfevals",
        "timeout",
    }
)


class CMA(ReplayOptimizer):
    """CMA-ES on R^dim (or the box ``[-bounds, bounds]^dim``), as in BBT.

    Args:
        dim: search dimension (>= 2; pycma does not support 1-D problems well).
        popsize: candidates per generation (lambda, >= 2).
        sigma0: initial step size (> 0).
        seed: non-negative int seeding the private PCG64 generator.
        bounds: if given, candidates lie in ``[-bounds, bounds]`` (pycma's ``BoundTransform``).
        x0: initial mean, shape ``(dim,)``; zeros by default.
        max_generations: optional generation limit for :meth:`should_stop`.
        budget: optional evaluation limit for :meth:`should_stop`.
        options: extra pycma options with JSON-friendly values (e.g. ``{"CMA_diagonal": True}``); options
            the wrapper controls (seeding, output, bounds, popsize, limits, timeout) are rejected.
    """

    type_name = "cma"

    def __init__(
        self,
        dim: int,
        popsize: int = 20,
        sigma0: float = 1.0,
        seed: int = 0,
        bounds: float | None = None,
        x0: np.ndarray | list[float] | None = None,
        max_generations: int | None = None,
        *,
        budget: int | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(dim, popsize, budget=budget, max_generations=max_generations)
        if self.dim < 2:
            raise ValueError("CMA needs dim >= 2; use a nevergrad optimizer ('ng:...') for 1-D problems")
        if self.popsize < 2:
            raise ValueError("CMA needs popsize >= 2")
        x0_arr = check_search_space(self.dim, sigma0, seed, bounds, x0)
        extra = dict(options or {})
        reserved = sorted(_RESERVED.intersection(extra))
        if reserved:
            raise ValueError(f"options {reserved} are set by the CMA wrapper; use its arguments instead")
        self._sigma0 = float(sigma0)
        self._seed = int(seed)
        self._bounds = None if bounds is None else float(bounds)
        self._x0 = x0_arr
        self._options = extra
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        opts: dict[str, Any] = {
            "popsize": self.popsize,
            "seed": np.nan,
            "randn": self._randn,
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "verb_plot": 0,
            "maxiter": np.inf,
            "maxfevals": np.inf,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolflatfitness": 10**12,
            "tolstagnation": 0,
            "tolxstagnation": False,
        }
        if self._bounds is not None:
            opts["bounds"] = [-self._bounds, self._bounds]
        opts.update(extra)
        self._es = cma.CMAEvolutionStrategy(self._x0.copy(), self._sigma0, opts)
        self._asked: list[np.ndarray] | None = None
        self._stop: dict[str, Any] = {}

    def _randn(self, *size: int) -> np.ndarray:
        """pycma's ``randn(lam, N)`` hook: standard normals from the private generator."""
        return self._rng.standard_normal(size)

    @property
    def name(self) -> str:
        """``"cma"``."""
        return self.type_name

    @property
    def sigma(self) -> float:
        """Current overall step size of CMA-ES (for dashboards)."""
        return float(self._es.sigma)

    @property
    def step_size(self) -> float:
        """``sigma``."""
        return self.sigma

    @property
    def mean(self) -> np.ndarray:
        """Distribution mean (in bounds: mapped into the box as pycma's ``result.xfavorite`` does)."""
        m = np.array(self._es.mean, dtype=np.float64)
        if self._bounds is not None:
            m = np.array(self._es.boundary_handler.repair(m), dtype=np.float64)
        return m

    @property
    def stop_conditions(self) -> dict[str, Any]:
        """pycma termination conditions met after the last tell (empty while running normally)."""
        return dict(self._stop)

    def _method_should_stop(self) -> bool:
        return bool(self._stop)

    def _ask(self) -> np.ndarray:
        self._asked = self._es.ask()
        return np.asarray(self._asked, dtype=np.float64)

    def _library_tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        assert self._asked is not None
        self._es.tell(self._asked, losses.tolist())
        self._asked = None
        self._stop = dict(self._es.stop())

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "popsize": self.popsize,
            "sigma0": self._sigma0,
            "seed": self._seed,
            "bounds": self._bounds,
            "x0": self._x0.tolist(),
            "max_generations": self.max_generations,
            "budget": self.budget,
            "options": dict(self._options),
        }

    @classmethod
    def _from_config(cls, type_name: str, config: Mapping[str, Any]) -> CMA:
        return cls(**dict(config))

    @staticmethod
    def _library_versions() -> dict[str, str]:
        return {"cma": str(cma.__version__), "numpy": np.__version__}

    def _extra_state(self) -> dict[str, Any]:
        """Adds ``"rng"`` (the PCG64 state, for inspection) and ``"sigma"``."""
        return {"rng": self._rng.bit_generator.state, "sigma": self.sigma}
