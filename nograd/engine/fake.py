"""A model stand-in with a fixed latency per batch, for service tests and benchmarks (no torch).

Label-word logits are a deterministic, smooth function of the candidate: the gold label's logit grows as z
approaches a hidden target vector, plus a fixed per-example offset, so losses are a real optimization landscape
and the same request always gives the same result on any worker.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from nograd.clients.losses import score_logits
from nograd.clients.render import candidates
from nograd.clients.types import DISCRETE_MODES, EvalRequest, EvalResult, ModelInfo, PromptSpec, TaskSpec

from .errors import EngineError

FAKE_PREFIX = "fake"


class FakeEngine:
    """An `Evaluator` (`evaluate` / `describe` / `materialize`) with `latency` seconds of sleep per call.

    Args:
        latency: seconds each `evaluate` call sleeps (the stand-in for a forward pass).
        n_layers: layers reported by `describe` (BBTv2 optimizes one z per layer).
        model_id: the name workers register it under.
    """

    def __init__(self, latency: float = 0.0, n_layers: int = 4, model_id: str = FAKE_PREFIX):
        self.latency, self.n_layers, self.model_id = float(latency), int(n_layers), model_id

    def describe(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id,
            kind="fake",
            hidden_size=16,
            n_layers=self.n_layers,
            max_length=4096,
            device="cpu",
            dtype="fp64",
        )

    def _candidates(self, request: EvalRequest) -> np.ndarray:
        dim = request.prompt.projection.dim
        if request.prompt.mode == "none":
            return np.zeros((1, 1))
        if request.prompt.mode == "deep":
            base = np.zeros((self.n_layers, dim)) if request.base is None else np.asarray(request.base, float)
            if base.shape != (self.n_layers, dim):
                raise EngineError(f"base must have shape ({self.n_layers}, {dim}); got {base.shape}")
            if request.z is None:
                return base.reshape(1, -1)
            rows = []
            for z in np.asarray(request.z, float):
                full = base.copy()
                full[request.layer] = z
                rows.append(full.reshape(-1))
            return np.stack(rows)
        if request.z is None:
            return np.zeros((1, dim))
        z = np.asarray(request.z, float)
        if z.ndim != 2 or z.shape[1] != dim:
            raise EngineError(f"z must have shape (P, {dim}); got {z.shape}")
        return z

    def evaluate(self, request: EvalRequest) -> EvalResult:
        started = time.perf_counter()
        if self.latency:
            time.sleep(self.latency)
        if request.prompt.mode in DISCRETE_MODES:
            quality = self._discrete_quality(request)
        else:
            x = self._candidates(request)
            target = np.random.default_rng(1234).normal(0.0, 0.5, x.shape[1])
            quality = -np.mean((x - target) ** 2, axis=1) + 0.25  # (P,): 0.25 - distance to the target
        labels = np.asarray(request.examples.labels, dtype=np.int64)
        n_labels = len(request.task.labels)
        offsets = np.stack([_example_offsets(text, n_labels) for text in request.examples.texts])  # (E, K)
        gold = np.eye(n_labels)[labels]  # (E, K)
        logits = offsets[None] + 4.0 * quality[:, None, None] * gold[None]
        scales = None
        if request.prompt.mode not in ("none", *DISCRETE_MODES) and request.prompt.scales is None:
            scales = (1.0,) * (self.n_layers if request.prompt.mode == "deep" else 1)
        return score_logits(request, logits, model_id=self.model_id, started=started, scales=scales)

    @staticmethod
    def _discrete_quality(request: EvalRequest) -> np.ndarray:
        """Discrete candidates: every prompt word and every demonstration has a fixed hidden value; a candidate's
        quality is the mean of its values (0 for the empty prompt), so some choices are better than others."""
        quality = []
        for task, text in candidates(request):
            items = text.split() + [d[0] for d in task.demos]
            quality.append(float(np.mean([_example_offsets(item, 1)[0] * 0.3 for item in items])) if items else 0.0)
        return np.asarray(quality)

    def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray:
        shape = (self.n_layers, spec.n_tokens, 16) if spec.mode == "deep" else (spec.n_tokens, 16)
        return np.zeros(shape, dtype=np.float32)

    def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray:
        """The fake model's text has no tokens of its own: the prompt's positions alone, zeros."""
        if spec.mode not in ("cat", "add"):
            raise EngineError("virtual tokens are built for cat/add soft prompts only")
        return self.materialize(spec, x)

    def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> None:
        """None: the fake model has no vocabulary."""
        return None


def _example_offsets(text: str, n_labels: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(0.0, 1.0, n_labels)


def parse_fake(name: str) -> FakeEngine | None:
    """`fake` or `fake:<latency seconds>` -> a FakeEngine registered under exactly `name`; else None."""
    if name != FAKE_PREFIX and not name.startswith(FAKE_PREFIX + ":"):
        return None
    latency = 0.0
    if ":" in name:
        try:
            latency = float(name.split(":", 1)[1])
        except ValueError:
            raise EngineError(f"model {name!r}: write fake:<latency seconds>, e.g. fake:0.05") from None
    return FakeEngine(latency=latency, model_id=name)
