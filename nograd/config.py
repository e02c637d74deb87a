"""Run configuration: every option of a run, each declared once with its type, bounds and help, and read by
everything that checks or documents an option (the CLI's flags, the REST schema, configs loaded from files).

A `RunConfig` is what a user asked for: options left at None take the method's default. `nograd.methods.resolve`
turns it into a `ResolvedConfig` (the same fields, every default filled in, cross-field rules checked), which is
what runs, what a run directory and a prompt file record, and what the service stores: a run resumed after a
release that changed a default still runs with the settings it started with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from nograd.clients.types import LOSSES, METRICS
from nograd.engine import DEFAULT_MEMORY_CAP_MB
from nograd.validation import FieldError, validate

LossName = Literal[LOSSES]  # type: ignore[valid-type]
MetricName = Literal[METRICS]  # type: ignore[valid-type]


class ConfigError(FieldError):
    """A run option is invalid; `field` names it and the message says how to fix it."""


def _opt(description: str, **bounds: Any) -> Any:
    return Field(description=description, **bounds)


@dataclass(frozen=True)
class RunConfig:
    """One run. None: the method's default (`nograd.methods.METHODS`)."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Annotated[str, _opt("the method (one of nograd.methods.METHODS)", max_length=32)] = "bbt"
    task: Annotated[str | None, _opt("bundled task (`nograd tasks` or GET /v1/tasks lists them)", max_length=100)] = (
        "mr"
    )
    # User dataset instead of a bundled task.
    dataset: Annotated[str | None, _opt("your own JSONL/CSV file instead of a bundled task", max_length=4096)] = None
    test_dataset: Annotated[str | None, _opt("a JSONL/CSV file of test examples for the dataset", max_length=4096)] = (
        None
    )
    test_fraction: Annotated[
        float | None,
        _opt(
            "share of each label's rows held out as the test set (0: none); unset: 0.2, at most 1000 rows, when "
            "every label keeps 8 rows for train and dev",
            ge=0,
            lt=1,
        ),
    ] = None
    template: Annotated[
        str | None, _opt("the dataset's template, e.g. 'Review: {text}\\nSentiment: {mask}'", max_length=4000)
    ] = None
    verbalizer: Annotated[
        str | None,
        _opt("the dataset's label words as label:word pairs, e.g. 'neg:negative,pos:positive'", max_length=4000),
    ] = None
    text_field: Annotated[str, _opt("the dataset's text field", max_length=100)] = "text"
    text2_field: Annotated[str | None, _opt("the dataset's second text field (pair tasks)", max_length=100)] = None
    label_field: Annotated[str, _opt("the dataset's label field", max_length=100)] = "label"
    metric: Annotated[MetricName, _opt("the dataset's metric")] = "accuracy"
    # Model.
    model: Annotated[
        str, _opt("the served model: a built-in name (smollm2-135m), a local folder, or fake[:latency]", max_length=200)
    ] = "smollm2-135m"
    dtype: Annotated[
        Literal["auto", "bf16", "fp16", "fp32"],
        _opt("the model's dtype; auto: bf16 where the hardware computes it natively, else fp16 (GPU) or fp32 (CPU)"),
    ] = "auto"
    device: Annotated[str, _opt("auto (CUDA when present), cpu, cuda, cuda:1, ...", max_length=32)] = "auto"
    memory_cap_mb: Annotated[
        float, _opt("activation memory one forward pass may use (scores do not depend on it)", gt=0, le=1e7)
    ] = DEFAULT_MEMORY_CAP_MB
    # Data.
    k_shot: Annotated[
        int | None,
        _opt(
            "training (and dev) examples per class; unset: 16, or the most the data allows (a note says)", ge=1, le=1024
        ),
    ] = None
    seed: Annotated[int, _opt("seed of the few-shot split, the projection and the optimizer", ge=0, le=2**31 - 1)] = 0
    # Search.
    budget: Annotated[int, _opt("model calls (candidates scored on the training batch)", ge=1, le=1_000_000)] = 600
    popsize: Annotated[int | None, _opt("candidates per generation", ge=2, le=1000)] = None
    optimizer: Annotated[str, _opt("cma or ng:<nevergrad optimizer>, e.g. ng:NGOpt", max_length=64)] = "cma"
    sigma0: Annotated[float, _opt("initial step size of the optimizer", gt=0, le=1000)] = 1.0
    bounds: Annotated[float | None, _opt("symmetric box [-bounds, bounds] for z", gt=0, le=1e6)] = None
    loss: Annotated[LossName, _opt("what the search minimizes: ce, hinge or perf (minus the metric)")] = "ce"
    dev_every: Annotated[int, _opt("evaluate on dev every N calls", ge=1, le=1_000_000)] = 100
    patience: Annotated[
        int | None,
        _opt(
            "stop the search after this many dev rounds without a better dev metric (None: use the whole budget)",
            ge=1,
            le=10_000,
        ),
    ] = None
    optimizer_stop: Annotated[
        bool, _opt("stop the search when the optimizer's own stop criteria fire (CMA-ES: tolx, tolupsigma, ...)")
    ] = False
    racing: Annotated[
        bool,
        _opt(
            "successive halving inside each generation: score all candidates on a quarter of the training batch, "
            "the better half on the next quarter, the best quarter on the rest; the budget counts "
            "example-evaluations"
        ),
    ] = False
    # Prompt.
    mode: Annotated[
        Literal["cat", "add"],
        _opt("bbt prompt injection: add (A z added to placeholder embeddings) or cat (A z + p0 inserted)"),
    ] = "add"
    n_tokens: Annotated[int, _opt("soft prompt tokens", ge=1, le=256)] = 50
    dim: Annotated[int, _opt("dimension d of z (CMA-ES needs 2 or more)", ge=2, le=10_000)] = 500
    distribution: Annotated[Literal["normal", "uniform"], _opt("the projection's distribution")] = "normal"
    alpha: Annotated[float | None, _opt("projection scale", gt=0, le=1000)] = None
    init: Annotated[str | None, _opt("text whose tokens seed the soft prompt", max_length=2000)] = None
    chat_template: Annotated[
        bool | None,
        _opt(
            "score under the model's chat template (the text is the user message, the label word starts the answer); "
            "None: on for an endpoint with api chat, else off"
        ),
    ] = None
    # Baselines; ICL search shows icl_shots x labels demonstrations unless prompt_length says otherwise.
    icl_shots: Annotated[int, _opt("demonstrations per class (icl, icl_search)", ge=1, le=32)] = 2
    # Discrete prompts (bbpl, rlprompt, icl_search).
    prompt_length: Annotated[
        int | None,
        _opt("discrete prompt positions (bbpl: n-grams, rlprompt: tokens, icl_search: demonstrations)", ge=1, le=64),
    ] = None
    lr: Annotated[float | None, _opt("learning rate (bbpl, rlprompt, icl_search)", gt=0, lt=1)] = None
    vocab_size: Annotated[int, _opt("bbpl: candidate n-grams per position", ge=2, le=5000)] = 200
    ngram_max: Annotated[int, _opt("bbpl: longest n-gram", ge=1, le=5)] = 5
    ngram_min_count: Annotated[int, _opt("bbpl: least n-gram frequency", ge=1, le=1000)] = 5
    min_pmi: Annotated[float, _opt("bbpl: least PMI to merge words into an n-gram", ge=0, le=100)] = 1.0
    policy_model: Annotated[str, _opt("rlprompt: the frozen policy LM", max_length=200)] = "smollm2-135m"
    top_k: Annotated[int, _opt("rlprompt: sampling cut-off", ge=1, le=50_000)] = 256
    mlp_hidden: Annotated[int, _opt("rlprompt: policy MLP width", ge=1, le=4096)] = 512
    reward_correct: Annotated[float, _opt("rlprompt: reward weight when right", gt=0, le=1e4)] = 200.0
    reward_wrong: Annotated[float, _opt("rlprompt: reward weight when wrong", gt=0, le=1e4)] = 180.0
    # Where the served model lives: None for this machine's (or the service's) workers, else a remote endpoint
    # (`nograd.clients.endpoint.EndpointConfig`).
    endpoint: Annotated[
        dict[str, Any] | None,
        _opt(
            'a remote endpoint as JSON, e.g. {"kind": "openai", "base_url": "http://127.0.0.1:8080/v1", '
            '"model": "m", "api_key_secret": "OPENAI_API_KEY"}'
        ),
    ] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """A config from JSON-like data, every field's type and bounds checked; raises ConfigError."""
        return validate(cls, data, what="a run option", error=ConfigError)


@dataclass(frozen=True)
class ResolvedConfig(RunConfig):
    """A `RunConfig` after `nograd.methods.resolve`: every method default filled in, checked as a whole. Only
    `resolve` makes new ones; `from_dict` reloads a stored one as it is (never re-resolving).

    `notes` says, in words, what resolving chose on the user's behalf from the data (the automatic test split, a
    k_shot lowered to fit a small file); the CLI prints them and a job's config keeps them."""

    notes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResolvedConfig:
        data = dict(data)
        if data.get("chat_template") is None:  # written before the option existed: what those runs did
            data["chat_template"] = (data.get("endpoint") or {}).get("api") == "chat"
        return validate(cls, data, what="a run option", error=ConfigError)


#: The options a service job takes at the top level of its body, and those it takes in `options` (the REST schema
#: is generated from these fields); every other option belongs to the machine that runs the model or reads the data.
JOB_FIELDS = ("method", "task", "model", "budget", "seed", "k_shot", "dev_every", "patience", "optimizer_stop")
JOB_OPTIONS = (
    "popsize",
    "racing",
    "optimizer",
    "sigma0",
    "alpha",
    "bounds",
    "loss",
    "mode",
    "n_tokens",
    "dim",
    "distribution",
    "init",
    "chat_template",
    "icl_shots",
    "prompt_length",
    "lr",
    "vocab_size",
    "ngram_max",
    "ngram_min_count",
    "min_pmi",
    "top_k",
    "mlp_hidden",
    "reward_correct",
    "reward_wrong",
)
