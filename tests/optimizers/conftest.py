"""Shared builders for the optimizer tests (small problems so the whole suite runs in seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from nograd.optimizers import DivideAndConquer, Optimizer, make_optimizer

#: Every optimizer family the contract tests cover.
NAMES = ["cma", "ng:NGOpt", "ng:TBPSA", "ng:CMA", "deep"]
DIM = 10
POPSIZE = 20
N_LAYERS = 3
# With dim 10, 20 workers and this budget NGOpt selects CMA.  (For small dims/budgets it picks MetaModel,
# which crashes with numpy 2.x in nevergrad 1.0.12 and leaves a scipy thread blocking interpreter exit.)
BUDGET = 2000
SHIFT = 0.5


def build(name: str, seed: int = 0, **kw: object) -> Optimizer:
    """A small optimizer of the given family."""
    if name == "deep":
        return make_optimizer("deep", n_layers=N_LAYERS, dim=DIM, popsize=POPSIZE, seed=seed, **kw)
    return make_optimizer(name, dim=DIM, popsize=POPSIZE, seed=seed, budget=BUDGET, **kw)


def losses_for(opt: Optimizer, x: np.ndarray) -> np.ndarray:
    """Shifted quadratic; for the deep optimizer, of the composed full prompts."""
    if isinstance(opt, DivideAndConquer):
        full = opt.compose(x)
        return ((full - SHIFT) ** 2).sum(axis=(1, 2))
    return ((x - SHIFT) ** 2).sum(axis=1)


def run(opt: Optimizer, generations: int) -> list[np.ndarray]:
    """Runs ``generations`` ask/tell rounds and returns the asked candidates."""
    asked = []
    for _ in range(generations):
        x = opt.ask()
        asked.append(x.copy())
        opt.tell(x, losses_for(opt, x))
    return asked


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    """Each optimizer family in turn."""
    return str(request.param)


class Kit:
    """The helpers above, handed to tests as the ``kit`` fixture (test modules cannot import conftest)."""

    NAMES = NAMES
    DIM = DIM
    POPSIZE = POPSIZE
    N_LAYERS = N_LAYERS
    SHIFT = SHIFT
    build = staticmethod(build)
    losses_for = staticmethod(losses_for)
    run = staticmethod(run)


@pytest.fixture
def kit() -> type[Kit]:
    """Builders and constants shared by the optimizer tests."""
    return Kit
