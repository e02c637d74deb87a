"""Tensor plumbing for the engine: materialized prompt sets, micro-batch ranges, cache construction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .layout import Layout


@dataclass
class PromptSet:
    """Materialized prompts for one request.

    embed: (P, n, H) prompts for `cat`/`add` (placed at the slots of the embedding layer) or None.
    deep: per layer, None or (G, n, H) with G = P (varying layer) or 1 (shared); for `deep` mode.
    varying_layer: the one deep layer whose prompt differs per candidate (None: all layers may differ).
    """

    population: int
    scales: tuple[float, ...] | None = None
    embed: torch.Tensor | None = None
    deep: list[torch.Tensor | None] | None = None
    varying_layer: int | None = None

    def deep_for(self, start: int, stop: int) -> list[torch.Tensor | None] | None:
        """Deep prompts restricted to candidates [start, stop) (shared layers are kept as they are)."""
        if self.deep is None:
            return None
        return [p if p is None or p.shape[0] == 1 else p[start:stop] for p in self.deep]


def ranges(total: int, step: int):
    return [(s, min(total, s + step)) for s in range(0, total, step)]


def cache_from(kv: list[tuple[torch.Tensor, torch.Tensor]], config) -> DynamicCache:
    """A DynamicCache holding the given tensors without copying them."""
    cache = DynamicCache(config=config)
    for layer, (keys, values) in zip(cache.layers, kv):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache


def select(layout: Layout, order: torch.Tensor) -> Layout:
    return Layout(
        prefix_ids=layout.prefix_ids,
        slots=layout.slots,
        body_ids=layout.body_ids[order],
        body_mask=layout.body_mask[order],
        score_pos=layout.score_pos[order],
        label_ids=layout.label_ids,
        labels=layout.labels[order],
        p0_ids=layout.p0_ids,
        mode=layout.mode,
    )
