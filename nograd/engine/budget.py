"""What a batch of soft or deep prompts costs a worker in memory beyond the model itself: the projection matrix of
the varying layer, the population's prompts and the activations of one forward pass. Pure arithmetic (no torch):
the API admits jobs with it, the engine checks every request with it before allocating.

Measured on the engine (float32 matrices and prompts): `projection_bytes` is exact; the prompts term counts z @ A,
its scaled copy and the injected embeddings; activations are bounded by the engine's memory cap.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT32 = 4


def projection_bytes(dim: int, n_tokens: int, hidden: int) -> int:
    """One layer's (dim, n_tokens * hidden) float32 projection matrix."""
    return int(dim) * int(n_tokens) * int(hidden) * FLOAT32


def prompt_bytes(population: int, n_tokens: int, hidden: int) -> int:
    """The population's prompts A z: the product, its scaled copy and the embeddings they are injected into."""
    return 3 * int(population) * int(n_tokens) * int(hidden) * FLOAT32


@dataclass(frozen=True)
class BatchCost:
    """A request's memory on a worker, by part (bytes)."""

    projection: int
    prompts: int
    activations: int

    @property
    def total(self) -> int:
        return self.projection + self.prompts + self.activations

    def describe(self) -> str:
        return (
            f"~{self.total / 2**20:,.0f} MB (projection matrix {self.projection / 2**20:,.0f} MB, prompts "
            f"{self.prompts / 2**20:,.0f} MB, activations {self.activations / 2**20:,.0f} MB)"
        )


def batch_cost(population: int, dim: int, n_tokens: int, hidden: int, activations: float) -> BatchCost:
    """A soft/deep request of `population` candidates; `activations`: the engine's memory cap in bytes."""
    return BatchCost(
        projection=projection_bytes(dim, n_tokens, hidden),
        prompts=prompt_bytes(population, n_tokens, hidden),
        activations=int(activations),
    )
