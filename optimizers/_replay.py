"""Replay-based state for optimizers that wrap libraries without a state API (pycma, nevergrad).

The state holds the constructor config plus the log of told generations: every loss (exactly, as float64),
a SHA-256 digest of every candidate matrix and each candidate's fingerprint (its projection on a fixed unit
vector).  ``from_state`` rebuilds the wrapper from its config, then for each logged generation calls the
library's ask (which advances its RNG exactly as before), checks the replayed candidates against the log, and
tells the logged losses.  The wrapped libraries draw randomness only from generators seeded by the config, so on
the machine that wrote the state the rebuilt optimizer is bit-identical to the original (the digests match).

Another machine may round differently: numpy's OpenBLAS picks its kernels by CPU (AVX2 or AVX-512), and a
different kernel changes the last bits of CMA-ES's linear algebra.  The replayed candidates then differ from the
saved ones by rounding (measured: about 1e-8 at d = 500 over 400 generations, not growing: CMA-ES's updates are
averages), so the digests differ while the fingerprints agree to within :data:`ROUNDING_TOLERANCE` of the
candidates' scale.  Such a replay is accepted with a :class:`RuntimeWarning`: the search continues from a state
equal to the saved one up to rounding (its later candidates differ in the same last digits), and the log is
rewritten with what this machine asked, so a second resume here is bit-identical.  Fingerprints that differ by
more, a best loss that differs, or (for states written before fingerprints existed, which only have digests) a
best candidate farther than the tolerance from the saved one, mean the library's behaviour changed (another
version or a non-deterministic algorithm) and raise :class:`OptimizerError`.

Candidates are stored as digests and fingerprints rather than arrays to keep the state small: a run of 400
generations of 20 x 500 candidates would otherwise store 4 million floats.  Restoring costs one replay of the run.
"""

from __future__ import annotations

import abc
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import STATE_VERSION, Optimizer, OptimizerError
from ._state import candidates_digest

__all__ = ["ROUNDING_TOLERANCE", "ReplayOptimizer", "candidate_fingerprints"]

#: How far (relative to 1 + the candidates' largest magnitude) a replayed candidate may be from the saved one
#: and still count as the same up to rounding.  Rounding differences between CPUs measured 1e-8 at d = 500.
ROUNDING_TOLERANCE = 1e-6


def candidate_fingerprints(candidates: np.ndarray) -> np.ndarray:
    """Each candidate's projection on a fixed unit vector of its dimension: ``(popsize,)`` float64.

    Unlike a digest it moves by rounding-sized amounts when the candidates do, so two replays can be compared
    within a tolerance.  The vector is PCG64(dim)'s standard normals, normalised (the same on every machine).
    """
    x = np.asarray(candidates, dtype=np.float64)
    return np.asarray(x @ _unit_vector(x.shape[1]), dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _unit_vector(dim: int) -> np.ndarray:
    u = np.random.Generator(np.random.PCG64(dim)).standard_normal(dim)
    return u / np.linalg.norm(u)


def _deviation(replayed: np.ndarray, saved: np.ndarray, scale: float) -> float:
    """max |replayed - saved| relative to 1 + scale."""
    return float(np.max(np.abs(np.asarray(replayed) - np.asarray(saved)), initial=0.0)) / (1.0 + scale)


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
        self._fingerprint_log: list[np.ndarray] = []

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        self._library_tell(candidates, losses)
        self._digest_log.append(candidates_digest(candidates))
        self._fingerprint_log.append(candidate_fingerprints(candidates))
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
        ``candidate_fingerprints`` (float64 array ``(generation, popsize)``, see :func:`candidate_fingerprints`),
        ``best_loss`` and ``best_x`` (checked after replay) and subclass extras.
        """
        empty = np.zeros((0, self.popsize), dtype=np.float64)
        losses = np.stack(self._loss_log) if self._loss_log else empty
        fingerprints = np.stack(self._fingerprint_log) if self._fingerprint_log else empty.copy()
        best_x, best_f = self.best
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "type": self.name,
            "config": self._config(),
            "library_versions": self._library_versions(),
            "generation": self.generation,
            "losses": losses,
            "candidate_sha256": list(self._digest_log),
            "candidate_fingerprints": fingerprints,
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
            # absent: written before fingerprints, when only a bit-identical replay was accepted
            fingerprints = state.get("candidate_fingerprints")
            fingerprints = None if fingerprints is None else np.asarray(fingerprints, dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise OptimizerError(f"corrupt {state.get('type')!r} state: {exc}") from exc
        if losses.shape != (generation, opt.popsize) or len(digests) != generation:
            raise OptimizerError(
                f"corrupt {state['type']!r} state: {generation} generations but losses of "
                f"shape {losses.shape} and {len(digests)} candidate digests"
            )
        if fingerprints is not None and fingerprints.shape != losses.shape:
            raise OptimizerError(
                f"corrupt {state['type']!r} state: candidate fingerprints of shape {fingerprints.shape}, "
                f"losses of shape {losses.shape}"
            )
        rounded, worst = 0, 0.0  # generations replayed equal up to rounding, and the largest deviation seen
        for g in range(generation):
            x = opt.ask()
            if candidates_digest(x) != digests[g]:
                rounded += 1
                if fingerprints is not None:
                    deviation = _deviation(candidate_fingerprints(x), fingerprints[g], float(np.max(np.abs(x))))
                    worst = max(worst, deviation)
                    if deviation > ROUNDING_TOLERANCE:
                        raise OptimizerError(
                            f"state replay diverged at generation {g}: the rebuilt {state['type']!r} optimizer asked "
                            f"other candidates than the saved run (relative deviation {deviation:.2g}, beyond "
                            f"rounding; library version changed? saved {saved}, now {now})"
                        )
            opt.tell(x, losses[g])
        best_loss = float(state.get("best_loss", opt.best[1]))
        if opt.best[1] != best_loss:
            raise OptimizerError(
                f"state replay diverged: best loss {opt.best[1]!r} after replay, "
                f"{best_loss!r} saved (library version changed?)"
            )
        if rounded:
            saved_x, replayed_x = state.get("best_x"), opt.best[0]
            if saved_x is not None and replayed_x is not None:
                saved_x = np.asarray(saved_x, dtype=np.float64)
                deviation = _deviation(replayed_x, saved_x, float(np.max(np.abs(saved_x))))
                worst = max(worst, deviation)
                if saved_x.shape != replayed_x.shape or deviation > ROUNDING_TOLERANCE:
                    raise OptimizerError(
                        f"state replay diverged: the best candidate after replay is {deviation:.2g} (relative) from "
                        f"the saved one, beyond rounding (library version changed? saved {saved}, now {now})"
                    )
            note = (
                f"restored {state['type']!r} state equal to the saved one up to rounding, not bit-identical: "
                f"{rounded} of {generation} generations replayed with other last digits (largest relative deviation "
                f"{worst:.2g}); this machine's BLAS rounds differently from the one that wrote the state"
            )
            opt._restore_notes.append(note)
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        return opt
