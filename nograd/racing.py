"""Candidate racing: successive halving inside one generation (numpy only; `PromptSearch` runs the rounds).

A racing generation scores every candidate on the first quarter of the training batch, the better half on the
next quarter and the best quarter on the remaining half, so only the last tier is scored on the whole batch and a
generation of P candidates costs about P/2 calls instead of P. The batch is visited in a class-stratified order
that is new every generation, so each slice is label-balanced and no example is always seen first or last.

Everything here is a pure function of its arguments (the order is seeded by the run's seed and the generation),
so a resumed search races exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The share of the training batch each round adds: a quarter, a quarter, the rest (a half).
ROUNDS = 3
#: Training examples and candidates racing needs (each of the three rounds sees at least one of each).
MIN_EXAMPLES = 4
MIN_POPSIZE = 4
_ORDER_STREAM = 0x5241  # keeps the racing order's random stream apart from every other use of the seed


def example_order(labels: Sequence[int], seed: int, generation: int) -> np.ndarray:
    """The order in which generation `generation` visits the training examples (indices into `labels`).

    Each label's examples are shuffled, then the labels take turns in a shuffled order (round-robin; a label that
    runs out drops from the rotation), so any prefix holds every label in proportion, within one example.
    Deterministic in (`seed`, `generation`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([_ORDER_STREAM, int(seed), int(generation)])
    classes = rng.permutation(np.unique(labels))
    queues = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    depth = max((len(q) for q in queues), default=0)
    return np.asarray([int(q[i]) for i in range(depth) for q in queues if i < len(q)], dtype=np.int64)


def slice_bounds(n_examples: int) -> list[tuple[int, int]]:
    """[start, stop) of each round's new examples in the visiting order: E/4, E/4, then the rest (rounded down,
    so the last round takes what is left)."""
    if n_examples < MIN_EXAMPLES:
        raise ValueError(f"racing needs at least {MIN_EXAMPLES} training examples, got {n_examples}")
    quarter, half = n_examples // 4, n_examples // 2
    return [(0, quarter), (quarter, half), (half, n_examples)]


def survivors_per_round(population: int) -> list[int]:
    """Candidates scored in each round: P, ceil(P/2), ceil(P/4) (each round keeps the better half, rounded up)."""
    sizes = [int(population)]
    for _ in range(ROUNDS - 1):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def cost(population: int, n_examples: int) -> int:
    """Example-evaluations of racing `population` candidates on a batch of `n_examples`."""
    bounds = slice_bounds(n_examples)
    return sum(n * (stop - start) for n, (start, stop) in zip(survivors_per_round(population), bounds))


def largest_population(population: int, n_examples: int, available: int) -> int:
    """The most candidates (at most `population`) whose race fits in `available` example-evaluations; 0 when not
    even one fits (a race of one candidate costs exactly one call, `n_examples`)."""
    fits = [p for p in range(1, population + 1) if cost(p, n_examples) <= available]
    return fits[-1] if fits else 0


def keep_best(losses: np.ndarray, n: int) -> np.ndarray:
    """Positions of the `n` lowest losses (ties: the earlier position), in ascending position order."""
    return np.sort(np.argsort(np.asarray(losses, dtype=np.float64), kind="stable")[:n])


def told_values(rounds_seen: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Values on the loss scale for the optimizer whose order is the race's ranking.

    Candidates that survived more rounds rank first, then by loss within a tier (`losses` are each candidate's
    objective over the examples it saw). The final tier (every round: the whole batch) keeps its losses. Each
    earlier-dropped tier keeps its losses shifted up by one constant, the least that puts its best strictly above
    every value of the tiers that outlasted it (no shift when it already lies above). So rank-based optimizers
    (CMA-ES) see exactly the race's ranking, and value-based ones (policy gradients) see loss-scale values in
    which a dropped candidate is never better than one that beat it.
    """
    rounds_seen = np.asarray(rounds_seen, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    values = losses.copy()
    ceiling = -np.inf  # the worst value given to the tiers that outlasted the current one
    for tier in sorted(set(rounds_seen.tolist()), reverse=True):
        members = rounds_seen == tier
        best = float(losses[members].min())
        shift = 0.0
        if best <= ceiling:
            shift = ceiling - best
            step = float(np.spacing(max(abs(ceiling), abs(best), abs(shift))))  # one unit in the last place
            while best + shift <= ceiling and math.isfinite(shift):  # rounding can leave best + shift on it
                shift, step = shift + step, 2 * step
        values[members] = losses[members] + shift
        ceiling = max(ceiling, float(values[members].max()))
    return values


__all__ = [
    "MIN_EXAMPLES",
    "MIN_POPSIZE",
    "ROUNDS",
    "cost",
    "example_order",
    "keep_best",
    "largest_population",
    "slice_bounds",
    "survivors_per_round",
    "told_values",
]
