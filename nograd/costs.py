"""What a job costs, estimated from its resolved options and the served model's shape before anything is
allocated: the memory its search needs in the runner, the memory one of its batches needs on a worker, and its
calls. The service refuses a job over the operator's limits at submit (a 422 naming the option and the largest
value that fits), the runner checks it again once the model's shape is known, and workers check every batch.

The coefficients were measured (bench/abuse.py prints estimate vs peak RSS side by side):
- pycma keeps its covariance, eigenvectors and working copies: ~25 bytes per dim^2 measured, 28 counted; the
  population arrays (asked, told, the replay log's digests, the queue's encoding) ~16 float64 copies of popsize x
  dim. BBTv2 holds one optimizer per layer. Nevergrad's optimizers are counted like CMA.
- RLPrompt's policy LM is held in float32; one step computes (popsize, prompt_length + 1, vocab) logits with
  autograd (logits, masked copy, log-softmax and its gradient: 4 copies).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import TypeAdapter

from nograd.clients.types import ModelInfo
from nograd.engine.budget import BatchCost, batch_cost
from nograd.engine.memory import budget_ceiling_mb

from .config import ConfigError, ResolvedConfig, RunConfig
from .methods import METHODS

MB = 2**20
#: Shapes of the policy LMs RLPrompt may use (parameters, hidden size, layers, vocabulary); other names are read
#: from a local model folder's config.json.
POLICY_SHAPES = {"smollm2-135m": (134_515_008, 576, 30, 49_152)}
#: Layers assumed for BBTv2 before the served model's shape is known (the runner checks again with the real one).
DEFAULT_LAYERS = 32


@dataclass(frozen=True)
class Limits:
    """The operator's limits (bytes and calls). `activations`: the workers' memory cap of one forward pass (the
    most an automatic one can be where the operator set none)."""

    runner_memory: float
    worker_memory: float
    max_calls: int
    activations: float

    @classmethod
    def from_settings(cls, settings) -> Limits:
        return cls(
            runner_memory=settings.max_job_memory_mb * MB,
            worker_memory=settings.worker_memory_mb * MB,
            max_calls=settings.max_job_calls,
            # an automatic cap (None) is at most budget_ceiling_mb: what the API admits, a worker then takes
            activations=(settings.memory_cap_mb or budget_ceiling_mb(settings.worker_memory_mb)) * MB,
        )


@dataclass(frozen=True)
class JobCost:
    """runner: bytes the job's search holds in its runner; worker: one batch on a worker (None: no soft or deep
    prompts, whose cost the worker's memory cap bounds); calls: the model calls it may make."""

    runner: int
    worker: BatchCost | None
    calls: int


def estimate(config: ResolvedConfig, info: ModelInfo | None) -> JobCost:
    """The cost of `config` on a model of shape `info` (None: not known yet; BBTv2 assumes DEFAULT_LAYERS)."""
    method = METHODS[config.method]
    layers = info.n_layers if info is not None else DEFAULT_LAYERS
    popsize = config.popsize or 1
    runner = 0
    if method.prompt in ("soft", "deep"):
        optimizers = layers if method.prompt == "deep" else 1
        runner = optimizers * 28 * config.dim**2 + 16 * 8 * popsize * config.dim * (2 if optimizers > 1 else 1)
    elif method.name == "rlprompt":
        params, hidden, depth, vocab = policy_shape(config.policy_model)
        steps = config.prompt_length + 1
        runner = 4 * params + 16 * popsize * steps * vocab + 32 * popsize * steps * hidden * depth
        runner += 3 * 4 * (2 * hidden * config.mlp_hidden)  # the MLP, its Adam moments
    elif method.name in ("bbpl", "icl_search"):
        runner = 8 * 10 * config.prompt_length * (config.vocab_size if method.name == "bbpl" else 1024)
    worker = None
    if method.prompt in ("soft", "deep") and info is not None:
        worker = batch_cost(popsize, config.dim, config.n_tokens, info.hidden_size, 0)
    return JobCost(runner=int(runner), worker=worker, calls=config.budget if method.is_search else 0)


def check(
    config: ResolvedConfig, info: ModelInfo | None, limits: Limits, *, asked: frozenset[str] = frozenset()
) -> JobCost:
    """`estimate`, refusing a job over `limits`: ConfigError naming the option to lower (one the user set if
    any, `asked`) and the largest value of it that fits with the others as they are."""
    cost = estimate(config, info)
    if cost.calls > limits.max_calls:
        raise ConfigError(
            "budget",
            f"{cost.calls} calls is over this service's limit of {limits.max_calls} per job "
            "(NOGRAD_MAX_JOB_CALLS); split the search into jobs that start from each other (init_from)",
        )
    if cost.runner > limits.runner_memory:
        soft = METHODS[config.method].prompt in ("soft", "deep")
        fields = ("dim", "popsize") if soft else ("popsize", "prompt_length", "top_k", "vocab_size")
        _refuse(
            config,
            _blame(fields, asked),
            lambda c: estimate(c, info).runner <= limits.runner_memory,
            f"its search needs ~{cost.runner / MB:,.0f} MB in the runner, over the limit of "
            f"{limits.runner_memory / MB:,.0f} MB per job (NOGRAD_MAX_JOB_MEMORY_MB)",
        )
    room = limits.worker_memory - limits.activations
    if cost.worker is not None and cost.worker.total > room:
        _refuse(
            config,
            _blame(("n_tokens", "dim", "popsize"), asked),
            lambda c: estimate(c, info).worker.total <= room,
            f"one batch needs {cost.worker.describe()} on a worker beside "
            f"{limits.activations / MB:,.0f} MB of activations, over the workers' limit of "
            f"{limits.worker_memory / MB:,.0f} MB (NOGRAD_WORKER_MEMORY_MB)",
        )
    return cost


def _blame(fields: tuple[str, ...], asked: frozenset[str]) -> tuple[str, ...]:
    """The options to name, those the user set first."""
    return tuple(sorted(fields, key=lambda f: f not in asked))


def _refuse(config: ResolvedConfig, fields: tuple[str, ...], fits, reason: str) -> None:
    for name in fields:
        largest = _largest(config, name, fits)
        if largest is not None:
            raise ConfigError(
                name,
                f"{getattr(config, name)} is too large: {reason}; the largest {name} that fits with these "
                f"options is {largest}",
            )
    raise ConfigError(fields[0], f"these options are too large: {reason}; lower {' and '.join(fields)}")


def _largest(config: ResolvedConfig, name: str, fits) -> int | None:
    """The largest value of integer option `name` (down to its lower bound) for which `fits`, by bisection."""
    low, high = _lower_bound(name), getattr(config, name)
    if not isinstance(high, int) or high <= low or not fits(replace(config, **{name: low})):
        return None
    while low < high - 1:  # fits(low) and not fits(high)
        mid = (low + high) // 2
        if fits(replace(config, **{name: mid})):
            low = mid
        else:
            high = mid
    return low


@functools.cache
def _lower_bound(name: str) -> int:
    """The option's schema minimum (`nograd.config.RunConfig`'s field bounds)."""
    field = TypeAdapter(RunConfig).json_schema()["properties"][name]
    numbers = [v for v in field.get("anyOf", [field]) if v.get("type") == "integer"]
    return int(numbers[0].get("minimum", 1)) if numbers else 1


def policy_shape(name: str) -> tuple[int, int, int, int]:
    """(parameters, hidden size, layers, vocabulary) of RLPrompt's policy LM `name`."""
    if name in POLICY_SHAPES:
        return POLICY_SHAPES[name]
    path = Path(name) / "config.json"
    try:
        config = json.loads(path.read_text())
        hidden, depth, vocab = int(config["hidden_size"]), int(config["num_hidden_layers"]), int(config["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return POLICY_SHAPES["smollm2-135m"]  # loading it fails later with a clear message if it is no model
    return 12 * depth * hidden**2 + vocab * hidden, hidden, depth, vocab
