"""Forward pre-hooks on the model's layer list: deep-prompt injection and frozen-layer reuse, for any HF
architecture whose layers take the hidden states as their first argument (no copied modeling code).

One `Injector` is attached per model; each forward sets a `Plan` (what to inject where) for its duration.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Plan:
    """What the hooks do during one forward pass.

    prompts: per layer, None or a (G, n, H) tensor added at positions `slots` of every row; rows are grouped
        candidate-major, `rows // G` consecutive rows per group (G = 1: the same prompt for every row).
    replace: layer -> hidden states to use as that layer's input instead of what arrives (frozen-layer reuse).
    capture: layers whose incoming hidden states (before injection) are stored into `captured`.
    """

    prompts: list[torch.Tensor | None] | None = None
    slots: torch.Tensor | None = None
    replace: dict[int, torch.Tensor] = field(default_factory=dict)
    capture: set[int] = field(default_factory=set)
    captured: dict[int, torch.Tensor] = field(default_factory=dict)

    def apply(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if layer in self.replace:
            hidden = self.replace[layer]
        if layer in self.capture:
            self.captured[layer] = hidden
        prompt = self.prompts[layer] if self.prompts is not None else None
        if prompt is None or self.slots is None or self.slots.numel() == 0:
            return hidden
        groups, rows = prompt.shape[0], hidden.shape[0]
        hidden = hidden.clone()
        grouped = hidden.view(groups, rows // groups, *hidden.shape[1:])
        grouped[:, :, self.slots] += prompt[:, None].to(hidden.dtype)
        return hidden


class _Passthrough(nn.Module):
    """Stands in for a frozen layer whose output is supplied by a `replace` at a later layer."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class Injector:
    """Owns the hooks on `layers`. Not thread-safe: one forward at a time per model."""

    def __init__(self, layers: nn.ModuleList):
        self.layers = layers
        self.plan: Plan | None = None
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._make_hook(index), with_kwargs=True)

    def _make_hook(self, index: int):
        def hook(module, args, kwargs):
            plan = self.plan
            if plan is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            new = plan.apply(index, hidden)
            if new is hidden:
                return None
            if args:
                return (new,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    @contextmanager
    def active(self, plan: Plan, skip_below: int = 0):
        """Run forwards under `plan`; layers with index < skip_below are replaced by pass-throughs."""
        originals = [self.layers[i] for i in range(skip_below)]
        try:
            for i in range(skip_below):
                self.layers[i] = _Passthrough()
            self.plan = plan
            yield plan
        finally:
            self.plan = None
            for i, layer in enumerate(originals):
                self.layers[i] = layer
