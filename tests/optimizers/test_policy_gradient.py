"""BBPL's categorical policy-gradient optimizer: sampling, simplex projection, learning, exact state round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nograd.optimizers import (
    OptimizerError,
    PolicyGradient,
    optimizer_from_state,
    project_simplex,
    state_from_json,
    state_to_json,
)


@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 12)), elements=st.floats(-10, 10)))
@settings(max_examples=200, deadline=None)
def test_projection_lands_on_the_simplex_and_keeps_simplex_points(rows):
    projected = project_simplex(rows)
    assert np.all(projected >= 0)
    np.testing.assert_allclose(projected.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(project_simplex(projected), projected, atol=1e-9)


def test_asks_valid_choices_and_uniform_start():
    opt = PolicyGradient(length=6, n_choices=5, popsize=400, seed=1)
    choices = opt.ask()
    assert choices.shape == (400, 6) and choices.dtype == np.float64
    assert set(np.unique(choices)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    counts = np.bincount(choices.astype(int).ravel(), minlength=5) / choices.size
    np.testing.assert_allclose(counts, 0.2, atol=0.03)  # uniform initial distribution


def test_learns_a_hidden_prompt_from_losses_alone():
    target = np.array([3, 0, 7, 7, 1])
    opt = PolicyGradient(length=5, n_choices=8, popsize=20, lr=0.05, seed=0)
    for _ in range(150):
        prompts = opt.ask()
        opt.tell(prompts, (prompts != target).sum(axis=1).astype(float))
    np.testing.assert_array_equal(opt.mean, target)
    assert np.all(opt.probs[np.arange(5), target] > 0.5)
    np.testing.assert_allclose(opt.probs.sum(axis=1), 1.0, atol=1e-9)


def test_state_round_trip_is_bit_identical():
    rng = np.random.default_rng(3)
    opt = PolicyGradient(length=4, n_choices=6, popsize=8, lr=0.01, seed=5)
    for _ in range(3):
        prompts = opt.ask()
        opt.tell(prompts, rng.normal(size=8))
    restored = optimizer_from_state(state_from_json(state_to_json(opt.state_dict())))
    assert isinstance(restored, PolicyGradient) and restored.generation == 3
    for _ in range(3):
        a, b = opt.ask(), restored.ask()
        np.testing.assert_array_equal(a, b)
        losses = rng.normal(size=8)
        opt.tell(a, losses)
        restored.tell(b, losses)
    np.testing.assert_array_equal(opt.probs, restored.probs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_choices": 1}, "n_choices"),
        ({"popsize": 1}, "popsize"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolicyGradient(**{"length": 3, "n_choices": 4, **kwargs})


def test_corrupt_state_is_a_clear_error():
    state = PolicyGradient(length=3, n_choices=4, popsize=4).state_dict()
    state["probs"] = np.ones((2, 2))
    with pytest.raises(OptimizerError, match="corrupt 'bbpl' state"):
        optimizer_from_state(state)
