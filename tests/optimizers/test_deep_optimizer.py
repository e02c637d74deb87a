"""DivideAndConquer (BBTv2): layer cycling, monotone base, rounds, composition and state."""

from __future__ import annotations

import numpy as np
import pytest

from nograd.optimizers import DivideAndConquer, make_deep_optimizer, optimizer_from_state


def _deep(**kw: object) -> DivideAndConquer:
    args = dict(n_layers=3, dim=4, popsize=6, seed=0)
    args.update(kw)
    return make_deep_optimizer(**args)  # type: ignore[arg-type]


def _loss(opt: DivideAndConquer, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    full = opt.compose(x)
    return ((full - 0.3) ** 2).sum(axis=(1, 2)) + 0.05 * rng.standard_normal(len(x))


def test_layers_cycle() -> None:
    opt = _deep()
    seen = []
    for _ in range(7):
        seen.append(opt.layer)
        x = opt.ask()
        assert opt.layer == seen[-1]  # pending ask keeps its layer
        opt.tell(x, (x**2).sum(axis=1))
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    assert [o.generation for o in opt.inners] == [3, 2, 2]


def test_base_only_improves() -> None:
    opt = _deep()
    rng = np.random.default_rng(0)
    assert np.array_equal(opt.base(), np.zeros((3, 4))) and opt.best_loss == np.inf
    opt.tell_reference(float(((opt.base() - 0.3) ** 2).sum()))
    prev_base, prev_loss = opt.base(), opt.best_loss
    for _ in range(30):
        layer = opt.layer
        x = opt.ask()
        f = _loss(opt, x, rng)
        opt.tell(x, f)
        base, loss = opt.best
        assert loss <= prev_loss
        if loss < prev_loss:
            assert loss == f.min() and np.array_equal(base[layer], x[np.argmin(f)])
            others = [i for i in range(3) if i != layer]
            assert np.array_equal(base[others], prev_base[others])
        else:
            assert np.array_equal(base, prev_base)
        prev_base, prev_loss = base, loss
    assert prev_loss < ((np.zeros((3, 4)) - 0.3) ** 2).sum()


def test_reference_loss_blocks_worse_candidates() -> None:
    opt = _deep()
    opt.tell_reference(-1.0)
    x = opt.ask()
    opt.tell(x, np.zeros(6))
    assert opt.best_loss == -1.0 and np.array_equal(opt.base(), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        opt.tell_reference(float("nan"))


def test_rounds_and_inner_budget() -> None:
    assert DivideAndConquer.rounds(8000, 20, 24) == 16
    assert DivideAndConquer.rounds(100, 20, 24) == 0
    opt = _deep(budget=6 * 3 * 2)
    assert all(o.budget == 12 for o in opt.inners)
    for _ in range(6):
        assert not opt.should_stop()
        x = opt.ask()
        opt.tell(x, (x**2).sum(axis=1))
    assert opt.should_stop()


def test_compose_and_mean() -> None:
    opt = _deep()
    x = opt.ask()
    full = opt.compose(x)
    assert full.shape == (6, 3, 4) and np.array_equal(full[:, 0], x) and not full[:, 1:].any()
    opt.tell(x, (x**2).sum(axis=1))
    mean = opt.mean
    assert np.array_equal(mean[0], opt.inners[0].mean) and not mean[1:].any()
    with pytest.raises(ValueError):
        opt.compose(np.zeros((2, 5)))


def test_inner_seeds_differ_per_layer() -> None:
    opt = _deep()
    first = opt.ask()
    opt.tell(first, (first**2).sum(axis=1))
    assert not np.array_equal(first, opt.ask())
    assert [o.state_dict()["config"]["seed"] for o in opt.inners] == [0, 1, 2]
    assert [o.state_dict()["config"]["seed"] for o in _deep(seed=2).inners] == [2000, 2001, 2002]


def test_deep_with_nevergrad_inner_round_trips() -> None:
    opt = _deep(inner="ng:TBPSA")
    straight = _deep(inner="ng:TBPSA")
    for o in (opt, straight):
        for _ in range(4):
            x = o.ask()
            o.tell(x, (x**2).sum(axis=1))
    resumed = optimizer_from_state(opt.state_dict())
    assert isinstance(resumed, DivideAndConquer) and resumed.layer == 1
    assert np.array_equal(resumed.ask(), straight.ask())
    assert resumed.best_loss == straight.best_loss and np.array_equal(resumed.base(), straight.base())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        _deep(n_layers=0)
    with pytest.raises(ValueError):
        _deep(inner="deep")
    with pytest.raises(ValueError):
        _deep(inner="ng:Nope")
