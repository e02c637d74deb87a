"""Run configs for tests: resolved the way `nograd run` and the service resolve them."""

from __future__ import annotations

from nograd.config import ResolvedConfig, RunConfig
from nograd.methods import resolve
from nograd.pipeline import load_task


def resolved(**options) -> ResolvedConfig:
    """`RunConfig(**options)` (bundled task `mr` unless given) resolved on its task."""
    config = RunConfig.from_dict(options)
    return resolve(config, load_task(config))
