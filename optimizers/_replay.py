"""Replay-based state for optimizers that wrap libraries without a state API (pycma, nevergrad).

The state holds the constructor config plus the log of told generations: every loss (exactly, as float64)
and a SHA-256 digest of every candidate matrix.  ``from_state`` rebuilds the wrapper from its config, then
for each logged generation calls the library's ask (which advances its RNG exactly as before), checks the
digest of the replayed candidates against the log, and tells the logged losses.  Because the wrapped
libraries draw randomness only from generators seeded by the config, the rebuilt optimizer is
bit-identical to the original.  A digest mismatch means the library's behaviour changed (different
version, platform maths, or a non-deterministic algorithm) and raises :class:`OptimizerError`.

Candidates are stored as digests rather than arrays to keep the state small: a run of 400 generations of
20 x 500 candidates would otherwise store 4 million floats.  Restoring costs one replay of the run.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import STATE_VERSION, Optimizer, OptimizerError
from ._state import candidates_digest

__all__ = ["ReplayOptimizer"]


class ReplayOptimizer(Optimizer):
    """An :class:`Optimizer` whose state is its config plus a replayable log of told generations.

    Subclasses implement :meth:`_config` (JSON-friendly constructor kwargs), :meth:`_from_config`,
    :meth:`_library_versions`, :meth:`_ask` and :meth:`_library_tell`.  The log invariant: ``len(losses) ==
    len(digests) == generation``.
    """

    def __init__(
        self, dim: int, popsize: int, *, budget: int | None = None, max_generations: int | None = None
    ) -> None:
        super().__init__(dim, popsize, budget=budget, max_generations=max_generations)
        self._loss_log: list[np.ndarray] = []
        self._digest_log: list[str] = []

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        self._library_tell(candidates, losses)
        self._digest_log.append(candidates_digest(candidates))
        self._loss_log.append(losses.copy())

    @abc.abstractmethod
    def _library_tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Tells the wrapped library (same contract as :meth:`Optimizer._tell`)."""

    @abc.abstractmethod
    def _config(self) -> dict[str, Any]:
        """JSON-friendly keyword arguments that rebuild this optimizer before any ask."""

    @classmethod
    @abc.abstractmethod
    def _from_config(cls, type_name: str, config: Mapping[str, Any]) -> ReplayOptimizer:
        """Constructs a fresh optimizer from ``state["type"]`` and ``state["config"]``."""

    @staticmethod
    @abc.abstractmethod
    def _library_versions() -> dict[str, str]:
        """Versions of the libraries whose behaviour the replay depends on."""

    @classmethod
    def _type_ok(cls, type_name: Any) -> bool:
        return bool(type_name == cls.type_name)

    def _extra_state(self) -> dict[str, Any]:
        """Informational entries added to the state (not needed to restore)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`Optimizer.state_dict`; layout documented in :mod:`nograd.optimizers._replay`.

        Keys: ``version``, ``type``, ``config``, ``library_versions``, ``generation``, ``losses``
        (float64 array ``(generation, popsize)``), ``candidate_sha256`` (list of ``generation`` hex digests),
        ``best_loss`` and ``best_x`` (informational; checked after replay) and subclass extras.
        """
        losses = np.stack(self._loss_log) if self._loss_log else np.zeros((0, self.popsize), dtype=np.float64)
        best_x, best_f = self.best
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "type": self.name,
            "config": self._config(),
            "library_versions": self._library_versions(),
            "generation": self.generation,
            "losses": losses,
            "candidate_sha256": list(self._digest_log),
            "best_loss": best_f,
            "best_x": best_x,
        }
        state.update(self._extra_state())
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ReplayOptimizer:
        """Rebuilds the optimizer by replaying the logged generations (see module docstring).

        Raises:
            OptimizerError: on a wrong version/type, an inconsistent log, or a replay whose candidates or
                best loss differ from the recorded ones.
        """
        cls._check_state(state, cls._type_ok(state.get("type") if isinstance(state, Mapping) else None))
        saved = state.get("library_versions", {})
        now = cls._library_versions()
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if changed:
            warnings.warn(
                f"restoring {state['type']!r} state written with other library versions "
                f"{changed} (saved, now); the replay check will catch any divergence",
                RuntimeWarning,
                stacklevel=2,
            )
        try:
            opt = cls._from_config(str(state["type"]), state["config"])
            losses = np.asarray(state["losses"], dtype=np.float64)
            digests = list(state["candidate_sha256"])
            generation = int(state["generation"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OptimizerError(f"corrupt {state.get('type')!r} state: {exc}") from exc
        if losses.shape != (generation, opt.popsize) or len(digests) != generation:
            raise OptimizerError(
                f"corrupt {state['type']!r} state: {generation} generations but losses of "
                f"shape {losses.shape} and {len(digests)} candidate digests"
            )
        for g in range(generation):
            x = opt.ask()
            if candidates_digest(x) != digests[g]:
                raise OptimizerError(
                    f"state replay diverged at generation {g}: the rebuilt {state['type']!r} optimizer asked "
                    f"different candidates than the saved run (library version changed? saved "
                    f"{saved}, now {now})"
                )
            opt.tell(x, losses[g])
        best_loss = float(state.get("best_loss", opt.best[1]))
        if opt.best[1] != best_loss:
            raise OptimizerError(
                f"state replay diverged: best loss {opt.best[1]!r} after replay, "
                f"{best_loss!r} saved (library version changed?)"
            )
        return opt
