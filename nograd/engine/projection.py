"""The fixed random projections A (one per layer) that turn a candidate z (d floats) into a prompt.

Matrices are generated on the CPU from the spec's seed with a dedicated `torch.Generator`, so every worker on
every device builds bit-identical projections. The cache is bounded in bytes: it keeps the `(d, n_tokens * hidden)`
unit matrices most recently used (a matrix larger than the whole cache is built, used and dropped), and the
prompts of single candidates (BBTv2's base z of the layers a request does not vary), so a request for deep
prompts needs the matrix of its varying layer only, not one per layer.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import numpy as np
import torch

from nograd.clients.types import ProjectionSpec

from .errors import EngineError


def _layer_seed(seed: int, layer: int) -> int:
    digest = hashlib.sha256(f"nograd-projection:{seed}:{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Projections:
    """Builds and caches projection matrices; `materialize` maps z to prompts.

    Invariant: for a given (spec, layer, n_tokens, hidden, scale) the matrix is the same in every process.
    The cache holds at most `max_bytes` of unit matrices (each d x n_tokens x hidden float32) and single prompts.
    """

    def __init__(self, max_bytes: float = 512 * 2**20):
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.max_bytes = int(max_bytes)
        self.cached_bytes = 0

    def _remember(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        self._cache[key] = value
        self.cached_bytes += size
        while self.cached_bytes > self.max_bytes:
            _, old = self._cache.popitem(last=False)
            self.cached_bytes -= old.numel() * old.element_size()

    def unit_matrix(self, spec: ProjectionSpec, layer: int, width: int) -> torch.Tensor:
        """(d, width) float32 CPU matrix with N(0, 1) entries (normal) or the paper's uniform init."""
        if spec.dim < 1:
            raise EngineError(f"projection.dim must be >= 1 (got {spec.dim})")
        key = (spec.seed, spec.dim, spec.distribution, layer, width)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        gen = torch.Generator(device="cpu").manual_seed(_layer_seed(spec.seed, layer))
        if spec.distribution == "normal":
            matrix = torch.randn(spec.dim, width, generator=gen, dtype=torch.float32)
        elif spec.distribution == "uniform":
            bound = 1.0 / math.sqrt(spec.dim)
            matrix = torch.empty(spec.dim, width, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
        else:
            raise EngineError(f"projection.distribution {spec.distribution!r} is unknown; use normal or uniform")
        self._remember(key, matrix)
        return matrix

    @staticmethod
    def normal_std(spec: ProjectionSpec, scale: float) -> float:
        """BBT's later code: std = alpha * scale / (sqrt(d) * sigma0)."""
        return spec.alpha * scale / (math.sqrt(spec.dim) * spec.sigma0)

    def materialize(
        self, spec: ProjectionSpec, z: np.ndarray, layer: int, n_tokens: int, hidden: int, scale: float
    ) -> torch.Tensor:
        """Prompts A z for candidates z (P, d) -> (P, n_tokens, hidden) float32 on the CPU."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != spec.dim:
            raise EngineError(f"z must have shape (population, {spec.dim}) to match projection.dim; got {z.shape}")
        if not np.isfinite(z).all():
            raise EngineError("z contains NaN or inf; candidates must be finite")
        single = None
        if z.shape[0] == 1:  # a base prompt: the same z comes back in every request of a generation
            single = ("prompt", spec.seed, spec.dim, spec.distribution, layer, n_tokens, hidden, scale, z.tobytes())
            if single in self._cache:
                self._cache.move_to_end(single)
                return self._cache[single]
        matrix = self.unit_matrix(spec, layer, n_tokens * hidden)
        factor = self.normal_std(spec, scale) if spec.distribution == "normal" else 1.0
        prompts = torch.from_numpy(z).float() @ matrix
        prompts = (prompts * factor).view(z.shape[0], n_tokens, hidden)
        if single is not None:
            self._remember(single, prompts)
        return prompts
