"""BBTv2's divide-and-conquer search over per-layer prompt vectors (registry name ``"deep"``).

The search space is ``(n_layers, dim)``.  Generation ``g`` optimises layer ``g % n_layers`` only, with
that layer's own inner optimizer; every other layer is frozen at its row of :meth:`DivideAndConquer.base`.
After each tell, if the generation's best loss beats ``best_loss`` the winning candidate replaces that
layer's base row, so the base only ever improves (monotone block-coordinate descent).

Invariants: ``sum(inner.generation) == generation`` and inner ``i`` has been told
``generation // n_layers + (i < generation % n_layers)`` times; ``best_loss`` never increases; ``base()``
changes only together with a strict decrease of ``best_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import STATE_VERSION, Optimizer, OptimizerError
from ._flat import flat_optimizer_from_state, is_flat, make_flat_optimizer

__all__ = ["DivideAndConquer"]

#: Inner seeds are ``seed * SEED_STRIDE + layer``, so distinct (seed, layer) pairs never share a stream.
SEED_STRIDE = 1000


class DivideAndConquer(Optimizer):
    """Layer-wise optimisation of an ``(n_layers, dim)`` prompt, one inner optimizer per layer.

    ``ask()`` returns ``(popsize, dim)`` candidates for the current :attr:`layer`; use :meth:`compose`
    to get the full ``(popsize, n_layers, dim)`` prompts to evaluate.

    Args:
        n_layers: number of layers (1 .. ``SEED_STRIDE``).
        dim: dimension of one layer's vector.
        popsize: candidates per generation.
        inner: registry name of the per-layer optimizer (``"cma"`` or ``"ng:<Name>"``).
        sigma0: initial step size of every inner optimizer.
        seed: non-negative int; layer ``i`` uses seed ``seed * 1000 + i``.
        bounds: optional symmetric box for every layer.
        budget: optional total number of evaluations; :meth:`should_stop` turns true when it is used up.
            Each inner optimizer gets ``max(1, rounds(budget, popsize, n_layers)) * popsize``.
        max_generations: optional total generation limit.
        inner_options: extra keyword arguments for every inner optimizer (may override its budget).
        x0: optional ``(n_layers, dim)`` start: row ``i`` is inner ``i``'s initial mean and the initial base
            (e.g. a prompt from an earlier run, for transfer).
    """

    type_name = "deep"

    def __init__(
        self,
        n_layers: int,
        dim: int,
        popsize: int = 20,
        inner: str = "cma",
        sigma0: float = 1.0,
        seed: int = 0,
        bounds: float | None = None,
        budget: int | None = None,
        max_generations: int | None = None,
        inner_options: Mapping[str, Any] | None = None,
        x0: np.ndarray | list | None = None,
    ) -> None:
        super().__init__(dim, popsize, budget=budget, max_generations=max_generations)
        if (
            isinstance(n_layers, bool)
            or not isinstance(n_layers, (int, np.integer))
            or not 1 <= n_layers <= SEED_STRIDE
        ):
            raise ValueError(f"n_layers must be an int in [1, {SEED_STRIDE}], got {n_layers!r}")
        if not is_flat(str(inner)):
            raise ValueError(f"inner must be a flat optimizer name ('cma' or 'ng:<Name>'), not {inner!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._n_layers = int(n_layers)
        self._inner_name = str(inner)
        self._sigma0 = float(sigma0)
        self._seed = int(seed)
        self._bounds = None if bounds is None else float(bounds)
        self._inner_options = dict(inner_options or {})
        opts = dict(self._inner_options)
        if budget is not None:
            opts.setdefault("budget", max(1, self.rounds(budget, self.popsize, self._n_layers)) * self.popsize)
        if x0 is None:
            self._x0 = None
        else:
            self._x0 = np.asarray(x0, dtype=np.float64)
            if self._x0.shape != (self._n_layers, self.dim) or not np.all(np.isfinite(self._x0)):
                raise ValueError(
                    f"x0 must be a finite ({self._n_layers}, {self.dim}) array, got shape {self._x0.shape}"
                )
        self._inners: list[Optimizer] = [
            make_flat_optimizer(
                self._inner_name,
                dim=self.dim,
                popsize=self.popsize,
                sigma0=self._sigma0,
                seed=self._seed * SEED_STRIDE + i,
                bounds=self._bounds,
                **({} if self._x0 is None else {"x0": self._x0[i]}),
                **opts,
            )
            for i in range(self._n_layers)
        ]
        self._base = np.zeros((self._n_layers, self.dim), dtype=np.float64) if self._x0 is None else self._x0.copy()
        self._best_f = math.inf

    @staticmethod
    def rounds(budget: int, popsize: int, n_layers: int) -> int:
        """Full passes over all layers that ``budget`` evaluations pay for: ``budget // (popsize * n_layers)``."""
        return int(budget) // (int(popsize) * int(n_layers))

    @property
    def name(self) -> str:
        """``"deep"``."""
        return self.type_name

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return self._n_layers

    @property
    def layer(self) -> int:
        """Layer the next (or pending) ask is for: ``generation % n_layers``."""
        return self.generation % self._n_layers

    @property
    def inners(self) -> tuple[Optimizer, ...]:
        """The per-layer optimizers (read-only use: asking or telling them directly breaks the schedule)."""
        return tuple(self._inners)

    @property
    def best_loss(self) -> float:
        """Lowest loss told so far (or given to :meth:`tell_reference`); ``inf`` initially."""
        return self._best_f

    def base(self) -> np.ndarray:
        """The frozen ``(n_layers, dim)`` vectors (a copy); zeros until a layer improves ``best_loss``."""
        return self._base.copy()

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """``(base(), best_loss)``: the best full ``(n_layers, dim)`` prompt found and its loss."""
        return self._base.copy(), self._best_f

    @property
    def mean(self) -> np.ndarray:
        """``(n_layers, dim)``: row ``i`` is inner ``i``'s mean if layer ``i`` was told at least once, else
        ``base()[i]``."""
        out = self._base.copy()
        for i, opt in enumerate(self._inners):
            if opt.generation > 0:
                out[i] = opt.mean
        return out

    def compose(self, candidates: np.ndarray) -> np.ndarray:
        """Full prompts for layer-``layer`` candidates: ``base()`` broadcast, row ``layer`` replaced.

        Args:
            candidates: ``(k, dim)`` array, typically the result of :meth:`ask`.

        Returns:
            ``(k, n_layers, dim)`` float64 array.
        """
        x = np.asarray(candidates, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"candidates must have shape (k, {self.dim}), got {x.shape}")
        out = np.repeat(self._base[None], x.shape[0], axis=0)
        out[:, self.layer] = x
        return out

    def tell_reference(self, loss: float) -> None:
        """Records the loss of the current :meth:`base` (e.g. of the all-zeros prompt before the first ask).

        ``best_loss`` becomes ``min(best_loss, loss)``; later candidates must beat it to enter the base.

        Raises:
            ValueError: if ``loss`` is not finite.
        """
        value = float(loss)
        if not math.isfinite(value):
            raise ValueError("reference loss must be finite")
        self._best_f = min(self._best_f, value)

    def _method_should_stop(self) -> bool:
        return all(opt.should_stop() for opt in self._inners)

    def _ask(self) -> np.ndarray:
        return self._inners[self.layer].ask()

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        self._inners[self.layer].tell(candidates, losses)

    def _update_best(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        i = int(np.argmin(losses))
        if losses[i] < self._best_f:
            self._best_f = float(losses[i])
            self._base[self.layer] = candidates[i]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``version``, ``type``, ``config``, ``inner`` (list of inner ``state_dict()``s), ``base``
        (``(n_layers, dim)`` array), ``best_loss`` and ``generation``."""
        return {
            "version": STATE_VERSION,
            "type": self.type_name,
            "config": {
                "n_layers": self._n_layers,
                "dim": self.dim,
                "popsize": self.popsize,
                "inner": self._inner_name,
                "sigma0": self._sigma0,
                "seed": self._seed,
                "bounds": self._bounds,
                "budget": self.budget,
                "max_generations": self.max_generations,
                "inner_options": dict(self._inner_options),
                **({} if self._x0 is None else {"x0": self._x0.tolist()}),
            },
            "inner": [opt.state_dict() for opt in self._inners],
            "base": self._base.copy(),
            "best_loss": self._best_f,
            "generation": self.generation,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DivideAndConquer:
        """Restores exactly (inner optimizers via their own ``from_state``).

        Raises:
            OptimizerError: on a wrong version/type or inconsistent per-layer generation counts.
        """
        cls._check_state(state, isinstance(state, Mapping) and state.get("type") == cls.type_name)
        try:
            opt = cls(**dict(state["config"]))
            inner_states = list(state["inner"])
            generation = int(state["generation"])
            base = np.asarray(state["base"], dtype=np.float64)
            best_loss = float(state["best_loss"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OptimizerError(f"corrupt 'deep' state: {exc}") from exc
        inners = [flat_optimizer_from_state(s) for s in inner_states]
        L = opt.n_layers
        expected = [generation // L + (1 if i < generation % L else 0) for i in range(L)]
        if len(inners) != L or [o.generation for o in inners] != expected:
            raise OptimizerError(
                f"corrupt 'deep' state: inner generations {[o.generation for o in inners]} "
                f"do not match {generation} total generations over {L} layers"
            )
        if any(o.dim != opt.dim or o.popsize != opt.popsize for o in inners):
            raise OptimizerError("corrupt 'deep' state: inner optimizer dim/popsize differ from the config")
        if base.shape != (L, opt.dim):
            raise OptimizerError(f"corrupt 'deep' state: base has shape {base.shape}, expected {(L, opt.dim)}")
        opt._inners = inners
        opt._restore_notes = [f"layer {i}: {note}" for i, o in enumerate(inners) for note in o.restore_notes]
        opt._base = base.copy()
        opt._best_f = best_loss
        opt._generation = generation
        return opt
