"""CMA-specific behaviour: convergence, bounds, options, step size, stop conditions."""

from __future__ import annotations

import numpy as np
import pytest

from nograd.optimizers import CMA, make_optimizer


def test_cma_minimises_shifted_quadratic() -> None:
    shift = np.linspace(-1.0, 2.0, 10)
    opt = CMA(dim=10, popsize=12, sigma0=1.0, seed=0)
    first = None
    for _ in range(150):
        x = opt.ask()
        f = ((x - shift) ** 2 * np.arange(1, 11)).sum(axis=1)
        first = f.min() if first is None else first
        opt.tell(x, f)
    x_best, f_best = opt.best
    assert f_best < 1e-6 * first
    assert np.allclose(x_best, shift, atol=1e-3)
    assert np.allclose(opt.mean, shift, atol=1e-3)
    assert opt.sigma < 1e-2


def test_initial_mean_and_sigma() -> None:
    x0 = np.arange(4.0) / 10
    opt = make_optimizer("cma", dim=4, popsize=6, sigma0=0.3, x0=x0)
    assert np.array_equal(opt.mean, x0)
    assert isinstance(opt, CMA) and opt.sigma == pytest.approx(0.3)


def test_bounds_are_respected() -> None:
    opt = make_optimizer("cma", dim=5, popsize=8, sigma0=3.0, bounds=0.5, seed=1)
    for _ in range(10):
        x = opt.ask()
        assert np.all(np.abs(x) <= 0.5)
        opt.tell(x, -np.abs(x).sum(axis=1))  # pushes towards the corners
    assert np.all(np.abs(opt.mean) <= 0.5)


def test_plateau_losses_do_not_stop_early() -> None:
    opt = make_optimizer("cma", dim=6, popsize=8, seed=2)
    for _ in range(40):
        x = opt.ask()
        opt.tell(x, np.round(np.abs(x[:, 0])))  # mostly flat, like accuracy on a tiny dev set
        assert not opt.should_stop(), opt.stop_conditions


def test_extra_options_pass_through_and_reserved_ones_are_rejected() -> None:
    opt = make_optimizer("cma", dim=6, popsize=8, options={"CMA_diagonal": True})
    opt.tell(x := opt.ask(), (x**2).sum(axis=1))
    for key in ("seed", "randn", "verb_log", "popsize", "bounds", "timeout"):
        with pytest.raises(ValueError, match="set by the CMA wrapper"):
            make_optimizer("cma", dim=6, options={key: 1})


@pytest.mark.parametrize(
    "kw",
    [
        {"dim": 1},
        {"popsize": 1},
        {"sigma0": 0.0},
        {"sigma0": float("nan")},
        {"seed": -1},
        {"bounds": -1.0},
        {"x0": [1.0, 2.0]},
        {"x0": [2.0] * 4, "bounds": 1.0},
    ],
)
def test_invalid_arguments(kw: dict) -> None:
    args = {"dim": 4, **kw}
    with pytest.raises(ValueError):
        CMA(**args)
