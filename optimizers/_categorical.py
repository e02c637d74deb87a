"""BBPL's optimizer: one categorical distribution per discrete prompt position, trained by a variance-reduced
policy gradient from losses alone (Diao et al., "Black-box Prompt Learning", TMLR 2023).

A candidate is a row of token *choices* (indices into the task's candidate vocabulary, stored as float64 to keep
the package's ask/tell contract); mapping choices to token ids is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import STATE_VERSION, Optimizer, OptimizerError

__all__ = ["PolicyGradient", "project_simplex"]


def project_simplex(rows: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the probability simplex (sort-based, Duchi et al. 2008)."""
    rows = np.asarray(rows, dtype=np.float64)
    ordered = -np.sort(-rows, axis=1)
    cumulative = np.cumsum(ordered, axis=1) - 1.0
    index = np.arange(1, rows.shape[1] + 1)
    support = ordered - cumulative / index > 0
    rho = support.shape[1] - 1 - np.argmax(support[:, ::-1], axis=1)  # last index where the condition holds
    theta = cumulative[np.arange(rows.shape[0]), rho] / (rho + 1)
    return np.maximum(rows - theta[:, None], 0.0)


class PolicyGradient(Optimizer):
    """Categorical prompt distribution, `length` positions x `n_choices` options, uniform at start.

    Each generation samples `popsize` prompts; `tell` forms the variance-reduced estimate
    g = 1/(I-1) * sum_k (L_k - mean L) * d log P(S_k) / dP, clips its norm, takes an AdamW step on the
    probabilities and projects every row back onto the simplex. Defaults follow the paper's code (lr 1e-4,
    weight decay 0.1, clip 3, I = 20).

    Args:
        length: prompt positions (the search dimension).
        n_choices: options per position (the candidate vocabulary size).
        popsize: prompts sampled per generation (I >= 2: the baseline needs two samples).
        lr, weight_decay, max_grad_norm, betas, eps: the AdamW step.
        seed: non-negative int; equal seeds give bit-identical runs.
        budget, max_generations: as for every optimizer.
    """

    type_name = "bbpl"

    def __init__(
        self,
        length: int,
        n_choices: int,
        popsize: int = 20,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        max_grad_norm: float = 3.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 0,
        budget: int | None = None,
        max_generations: int | None = None,
    ) -> None:
        super().__init__(length, popsize, budget=budget, max_generations=max_generations)
        if isinstance(n_choices, bool) or not isinstance(n_choices, (int, np.integer)) or n_choices < 2:
            raise ValueError(f"n_choices must be an int >= 2, got {n_choices!r}")
        if popsize < 2:
            raise ValueError("popsize must be >= 2: the mean-loss baseline needs at least two samples")
        for name, value in (("lr", lr), ("max_grad_norm", max_grad_norm), ("eps", eps)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < 1 / lr):
            raise ValueError(f"weight_decay must be in [0, 1/lr), got {weight_decay!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.n_choices = int(n_choices)
        self._config = {
            "length": int(length),
            "n_choices": self.n_choices,
            "popsize": int(popsize),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "max_grad_norm": float(max_grad_norm),
            "betas": [float(b) for b in betas],
            "eps": float(eps),
            "seed": int(seed),
            "budget": budget,
            "max_generations": max_generations,
        }
        self.probs = np.full((self.dim, self.n_choices), 1.0 / self.n_choices)
        self._m = np.zeros_like(self.probs)
        self._v = np.zeros_like(self.probs)
        self._steps = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def name(self) -> str:
        return self.type_name

    @property
    def mean(self) -> np.ndarray:
        """The most likely prompt (argmax per position), as float64 choices: what BBPL evaluates on dev/test."""
        return np.argmax(self.probs, axis=1).astype(np.float64)

    def _ask(self) -> np.ndarray:
        u = self._rng.random((self.popsize, self.dim))
        cdf = np.cumsum(self.probs, axis=1)
        cdf[:, -1] = 1.0  # guard against rounding
        choices = (cdf[None, :, :] < u[:, :, None]).sum(axis=2)
        return np.minimum(choices, self.n_choices - 1).astype(np.float64)

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        c = self._config
        choices = candidates.astype(np.int64)
        advantages = losses - losses.mean()
        grad = np.zeros_like(self.probs)
        rows = np.arange(self.dim)
        for advantage, sample in zip(advantages, choices):
            # d log P(S) / d p[j, v] = 1 / p[j, s_j] where v = s_j, else 0 (independent positions)
            grad[rows, sample] += advantage / np.maximum(self.probs[rows, sample], 1e-12)
        grad /= len(losses) - 1
        norm = float(np.linalg.norm(grad))
        if norm > c["max_grad_norm"]:
            grad *= c["max_grad_norm"] / norm
        beta1, beta2 = c["betas"]
        self._steps += 1
        self._m = beta1 * self._m + (1 - beta1) * grad
        self._v = beta2 * self._v + (1 - beta2) * grad * grad
        m_hat = self._m / (1 - beta1**self._steps)
        v_hat = self._v / (1 - beta2**self._steps)
        updated = self.probs * (1 - c["lr"] * c["weight_decay"]) - c["lr"] * m_hat / (np.sqrt(v_hat) + c["eps"])
        self.probs = project_simplex(updated)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "type": self.type_name,
            "config": dict(self._config),
            "probs": self.probs.copy(),
            "m": self._m.copy(),
            "v": self._v.copy(),
            "steps": self._steps,
            "rng": self._rng.bit_generator.state,
            "generation": self.generation,
            "best_x": None if self._best_x is None else self._best_x.copy(),
            "best_loss": self._best_f,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PolicyGradient:
        cls._check_state(state, isinstance(state, Mapping) and state.get("type") == cls.type_name)
        try:
            config = dict(state["config"])
            config["betas"] = tuple(config["betas"])
            opt = cls(**config)
            probs = np.asarray(state["probs"], dtype=np.float64)
            if probs.shape != opt.probs.shape:
                raise ValueError(f"probs has shape {probs.shape}, expected {opt.probs.shape}")
            opt.probs = probs.copy()
            opt._m = np.asarray(state["m"], dtype=np.float64).copy()
            opt._v = np.asarray(state["v"], dtype=np.float64).copy()
            opt._steps = int(state["steps"])
            opt._rng.bit_generator.state = dict(state["rng"])
            opt._generation = int(state["generation"])
            opt._best_x = None if state["best_x"] is None else np.asarray(state["best_x"], dtype=np.float64)
            opt._best_f = float(state["best_loss"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OptimizerError(f"corrupt 'bbpl' state: {exc}") from exc
        return opt
