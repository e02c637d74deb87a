"""Gradient-free ask/tell optimizers with explicit, pickle-free, serialisable state.

Pure numpy: no I/O, no logging configuration, no global RNG use.  Every optimizer follows the
:class:`Optimizer` contract::

    opt = make_optimizer("cma", dim=500, popsize=20, sigma0=1.0, seed=0, budget=8000)
    while not opt.should_stop():
        x = opt.ask()                      # (popsize, dim) float64
        opt.tell(x, losses_of(x))          # finite losses, same order
    text = state_to_json(opt.state_dict())
    opt = optimizer_from_state(state_from_json(text))   # continues bit-identically

Names: ``"cma"`` (pycma CMA-ES), ``"ng:<Name>"`` (any nevergrad optimizer) and ``"deep"`` (BBTv2's
layer-wise divide and conquer, :func:`make_deep_optimizer`).
"""

from ._base import STATE_VERSION, Optimizer, OptimizerError
from ._categorical import PolicyGradient, project_simplex
from ._cma import CMA
from ._deep import DivideAndConquer
from ._nevergrad import NG_PREFIX, Nevergrad, check_nevergrad_name, nevergrad_names
from ._registry import (
    available_optimizers,
    make_deep_optimizer,
    make_optimizer,
    optimizer_from_state,
)
from ._state import state_from_json, state_to_json

__all__ = [
    "check_nevergrad_name",
    "PolicyGradient",
    "project_simplex",
    "CMA",
    "NG_PREFIX",
    "STATE_VERSION",
    "DivideAndConquer",
    "Nevergrad",
    "Optimizer",
    "OptimizerError",
    "available_optimizers",
    "make_deep_optimizer",
    "make_optimizer",
    "nevergrad_names",
    "optimizer_from_state",
    "state_from_json",
    "state_to_json",
]
