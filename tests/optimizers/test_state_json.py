"""Lossless JSON encoding of optimizer states."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nograd.optimizers import state_from_json, state_to_json


@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements=st.floats(allow_nan=True, allow_infinity=True),
    )
)
def test_float_arrays_round_trip_bit_exactly(arr: np.ndarray) -> None:
    back = state_from_json(state_to_json({"a": arr}))["a"]
    assert back.dtype == np.float64 and back.shape == arr.shape
    assert np.array_equal(back, arr, equal_nan=True)
    finite = ~np.isnan(arr)  # NaN carries no meaningful sign in a state; -0.0 must stay -0.0
    assert np.array_equal(np.signbit(back)[finite], np.signbit(arr)[finite])


def test_scalars_nesting_and_strictness() -> None:
    state = {
        "version": 1,
        "inf": math.inf,
        "ninf": -math.inf,
        "nested": {"t": (1, 2.5, None, True)},
        "ints": np.arange(3),
        "flags": np.array([True, False]),
        "n": np.int64(7),
        "x": np.float64(0.1),
        "big": 2**127 + 1,
        "empty": np.zeros((0, 5)),
    }
    text = state_to_json(state)
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    json.loads(text)
    back = state_from_json(text)
    assert back["inf"] == math.inf and back["ninf"] == -math.inf and back["nested"] == {"t": [1, 2.5, None, True]}
    assert back["ints"].dtype == np.arange(3).dtype and np.array_equal(back["ints"], np.arange(3))
    assert back["flags"].dtype == bool and back["n"] == 7 and back["x"] == 0.1 and back["big"] == 2**127 + 1
    assert back["empty"].shape == (0, 5)


def test_rejects_unserialisable_values() -> None:
    with pytest.raises(TypeError):
        state_to_json({"f": object()})
    with pytest.raises(TypeError):
        state_to_json({1: 2})
    with pytest.raises(ValueError):
        state_from_json("[1, 2]")
