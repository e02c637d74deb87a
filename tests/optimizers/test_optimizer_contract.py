"""The ask/tell contract, seeding and isolation, for every optimizer family."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nograd.optimizers import Optimizer, OptimizerError, make_optimizer


def _global_state_equal(a: tuple, b: tuple) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_ask_shapes_and_generation(name: str, kit) -> None:
    opt: Optimizer = kit.build(name)
    assert (opt.dim, opt.popsize, opt.generation) == (kit.DIM, kit.POPSIZE, 0)
    assert opt.best[1] == np.inf and not opt.pending
    x = opt.ask()
    assert x.shape == (kit.POPSIZE, kit.DIM) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert opt.pending
    asked = x.copy()
    x[:] = 123.0  # the returned array is the caller's copy: changing it does not affect the optimizer
    opt.tell(asked, kit.losses_for(opt, asked))
    assert opt.generation == 1 and not opt.pending
    assert np.isfinite(opt.best[1])
    mean = opt.mean
    assert mean.dtype == np.float64 and np.all(np.isfinite(mean))


def test_double_ask_raises(name: str, kit) -> None:
    opt = kit.build(name)
    opt.ask()
    with pytest.raises(OptimizerError, match="twice"):
        opt.ask()


def test_tell_without_ask_raises(name: str, kit) -> None:
    opt = kit.build(name)
    with pytest.raises(OptimizerError, match="ask"):
        opt.tell(np.zeros((kit.POPSIZE, kit.DIM)), np.zeros(kit.POPSIZE))


def test_bad_tells_raise_and_leave_ask_pending(name: str, kit) -> None:
    opt = kit.build(name)
    x = opt.ask()
    f = kit.losses_for(opt, x)
    with pytest.raises(ValueError, match="shape"):
        opt.tell(x[:-1], f[:-1])
    with pytest.raises(ValueError, match="shape"):
        opt.tell(x, f[:-1])
    with pytest.raises(ValueError, match="differ"):
        opt.tell(x + 1e-12, f)
    with pytest.raises(ValueError, match="differ"):
        opt.tell(x[::-1], f)
    for bad in (np.nan, np.inf, -np.inf):
        g = f.copy()
        g[3] = bad
        with pytest.raises(ValueError, match=r"finite.*indices \[3\].*penalty"):
            opt.tell(x, g)
    assert opt.pending and opt.generation == 0
    opt.tell(x, f.reshape(-1, 1))  # the fixed call goes through
    assert opt.generation == 1


def test_same_seed_same_trajectory_different_seed_differs(name: str, kit) -> None:
    a, b, c = kit.build(name, seed=3), kit.build(name, seed=3), kit.build(name, seed=4)
    xa, xb, xc = kit.run(a, 4), kit.run(b, 4), kit.run(c, 4)
    assert all(np.array_equal(p, q) for p, q in zip(xa, xb, strict=True))
    assert a.best[1] == b.best[1]
    assert not np.array_equal(xa[0], xc[0])


def test_global_numpy_rng_untouched(name: str, kit) -> None:
    np.random.seed(12345)
    before = np.random.get_state()
    opt = kit.build(name)
    kit.run(opt, 3)
    _ = opt.mean
    opt.should_stop()
    opt.state_dict()
    assert _global_state_equal(before, np.random.get_state())


def test_no_files_written(name: str, kit, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    kit.run(kit.build(name), 3)
    assert os.listdir(tmp_path) == []


def test_budget_and_max_generations_stop(kit) -> None:
    opt = make_optimizer("cma", dim=4, popsize=6, budget=13)
    stops = []
    for _ in range(4):
        stops.append(opt.should_stop())
        kit.run(opt, 1)
    assert stops == [False, False, False, True]  # 18 >= 13 evaluations after 3 generations
    opt = make_optimizer("ng:TBPSA", dim=4, popsize=6, max_generations=2)
    kit.run(opt, 2)
    assert opt.should_stop()


def test_unknown_names_are_clear() -> None:
    with pytest.raises(ValueError, match="NGOpt"):
        make_optimizer("ng:NGOptt", dim=4)
    with pytest.raises(ValueError, match="valid names"):
        make_optimizer("cmaes", dim=4)
    with pytest.raises(ValueError, match="budget"):
        make_optimizer("ng:NGOpt", dim=4)
    with pytest.raises(ValueError, match="n_layers"):
        make_optimizer("deep", dim=4)


def test_nevergrad_global_rng_use_is_sandboxed_and_deterministic(kit) -> None:
    """LhsDE draws from the global ``np.random``: the sandbox keeps that private and reproducible."""

    def make() -> Optimizer:
        return make_optimizer("ng:LhsDE", dim=6, popsize=10, seed=7, budget=400)

    np.random.seed(0)
    before = np.random.get_state()
    a = make()
    xa = kit.run(a, 4)
    np.random.seed(99)  # a different caller global state must not change the run
    b = make()
    xb = kit.run(b, 4)
    assert all(np.array_equal(p, q) for p, q in zip(xa, xb, strict=True))
    np.random.set_state(before)
    c = make()
    kit.run(c, 4)
    assert _global_state_equal(before, np.random.get_state())
