"""Lossless conversion of optimizer state dicts to and from JSON text.

``Optimizer.state_dict()`` returns nested dicts of ``str``/``int``/``float``/``bool``/``None``/lists plus
``np.ndarray`` values.  :func:`state_to_json` turns such a dict into strict JSON (no ``NaN``/``Infinity``
tokens) and :func:`state_from_json` inverts it exactly:

* ``np.ndarray`` -> ``{"__ndarray__": nested list, "dtype": str, "shape": list}``.  Float64 values survive
  bit-exactly because Python's ``json`` writes floats with ``repr`` (shortest round-tripping form).
* non-finite floats (inside arrays too) -> ``{"__float__": "inf" | "-inf" | "nan"}``.
* numpy scalars -> the equivalent Python scalar; tuples -> lists.

No pickle is used anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

__all__ = ["candidates_digest", "state_from_json", "state_to_json"]

_ARRAY_TAG = "__ndarray__"
_FLOAT_TAG = "__float__"
_SUPPORTED_KINDS = ("f", "i", "u", "b")


def _encode_float(value: float) -> float | dict[str, str]:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return {_FLOAT_TAG: "nan"}
    return {_FLOAT_TAG: "inf" if value > 0 else "-inf"}


def _to_jsonable(obj: Any) -> Any:
    """Recursively converts ``obj`` into values ``json.dumps(allow_nan=False)`` accepts."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _SUPPORTED_KINDS:
            raise TypeError(f"cannot serialise array of dtype {obj.dtype}; use float, int or bool arrays")
        return {_ARRAY_TAG: _to_jsonable(obj.tolist()), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"state dict keys must be str, got {key!r}")
            out[key] = _to_jsonable(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _encode_float(float(obj))
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot serialise {type(obj).__name__} in an optimizer state")


def _object_hook(obj: dict[str, Any]) -> Any:
    if _FLOAT_TAG in obj and len(obj) == 1:
        return float(obj[_FLOAT_TAG])
    if _ARRAY_TAG in obj:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
        return np.array(obj[_ARRAY_TAG], dtype=dtype).reshape(shape)
    return obj


def state_to_json(state: dict[str, Any]) -> str:
    """Serialises an optimizer state dict to strict JSON text.

    Args:
        state: a dict as returned by ``Optimizer.state_dict()``.

    Returns:
        JSON text; ``state_from_json(state_to_json(s))`` equals ``s`` exactly (arrays keep dtype, shape
        and every bit of every float64; tuples come back as lists).

    Raises:
        TypeError: if ``state`` holds a value that has no lossless JSON form (objects, complex arrays, ...).
    """
    return json.dumps(_to_jsonable(state), allow_nan=False, separators=(",", ":"))


def state_from_json(text: str) -> dict[str, Any]:
    """Parses JSON written by :func:`state_to_json` back into a state dict with ``np.ndarray`` values.

    Args:
        text: JSON text produced by :func:`state_to_json`.

    Returns:
        The state dict, ready for ``optimizer_from_state``.

    Raises:
        ValueError: if the text is not valid JSON or its top level is not an object.
    """
    state = json.loads(text, object_hook=_object_hook)
    if not isinstance(state, dict):
        raise ValueError("optimizer state JSON must be an object at the top level")
    return state


def candidates_digest(candidates: np.ndarray) -> str:
    """SHA-256 hex digest of a candidate matrix, used to verify state replays bit-exactly.

    The digest covers shape and the little-endian float64 bytes, so two matrices have equal digests exactly
    when ``np.array_equal`` holds (up to hash collisions) and both have the same shape.
    """
    arr = np.ascontiguousarray(candidates, dtype="<f8")
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()
