"""Run configuration: everything needed to rerun a prompt-optimization run, validated with clear errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

METHODS = ("manual", "icl", "bbt", "bbtv2", "bbpl", "rlprompt", "icl_search")
SEARCH_METHODS = ("bbt", "bbtv2", "bbpl", "rlprompt", "icl_search")
#: Methods that send soft prompts (embeddings): a text-only endpoint cannot serve them.
EMBEDDING_METHODS = ("bbt", "bbtv2")
DISCRETE_METHODS = ("bbpl", "rlprompt", "icl_search")


# Settings that differ by method, as used for bench/quality.py: BBT's alpha after a small sweep (see README);
# BBTv2's alpha from its README, and a smaller population so a few hundred calls reach every layer.
METHOD_DEFAULTS = {
    "bbt": {"alpha": 0.5, "popsize": 20},
    "bbtv2": {"alpha": 0.2, "popsize": 10},
    # BBPL and RLPrompt: the papers' defaults (../shared/algorithms.md). ICL search: BBPL's machinery over the
    # training examples; lr scaled with the pool size (probabilities start at 1/32, not 1/200). Its length is
    # the ICL baseline's demonstration count (icl_shots x labels) unless set.
    "bbpl": {"popsize": 20, "lr": 1e-4, "prompt_length": 10},
    "rlprompt": {"popsize": 16, "lr": 5e-5, "prompt_length": 5},
    "icl_search": {"popsize": 20, "lr": 1e-3},
}


class ConfigError(ValueError):
    """A run option is invalid; the message names the field and the fix."""


@dataclass
class RunConfig:
    """One run. Defaults are the tuned settings reported in bench/quality.py (see README)."""

    method: str = "bbt"
    task: str | None = "mr"
    # User dataset instead of a bundled task.
    dataset: str | None = None
    test_dataset: str | None = None
    test_fraction: float = 0.0
    template: str | None = None
    verbalizer: str | None = None
    text_field: str = "text"
    text2_field: str | None = None
    label_field: str = "label"
    metric: str = "accuracy"
    # Model.
    model: str = "smollm2-135m"
    dtype: str = "bf16"
    device: str = "auto"
    memory_cap_mb: float = 256.0
    # Data.
    k_shot: int = 16
    seed: int = 0
    # Search.
    budget: int = 600
    popsize: int | None = None  # None: the method's default (METHOD_DEFAULTS)
    optimizer: str = "cma"
    sigma0: float = 1.0
    bounds: float | None = None
    loss: str = "ce"
    dev_every: int = 100
    # Prompt.
    mode: str = "add"
    n_tokens: int = 50
    dim: int = 500
    distribution: str = "normal"
    alpha: float | None = None  # None: the method's default (METHOD_DEFAULTS)
    init: str | None = None
    # Baselines; ICL search shows icl_shots x labels demonstrations unless prompt_length says otherwise.
    icl_shots: int = 2
    # Discrete prompts (bbpl, rlprompt, icl_search). None: the method's default (METHOD_DEFAULTS).
    prompt_length: int | None = None
    lr: float | None = None
    vocab_size: int = 200
    ngram_max: int = 5
    ngram_min_count: int = 5
    min_pmi: float = 1.0
    policy_model: str = "smollm2-135m"
    top_k: int = 256
    mlp_hidden: int = 512
    reward_correct: float = 200.0
    reward_wrong: float = 180.0
    # Where the served model lives: None for this service's workers, else a remote endpoint (see
    # clients.remote.EndpointConfig: {"kind": "openai", "base_url": ..., "model": ..., "api_key_secret": ...}).
    endpoint: dict | None = None

    def validate(self) -> "RunConfig":
        def fail(field: str, message: str):
            raise ConfigError(f"{field}: {message}")

        if self.method not in METHODS:
            fail("method", f"{self.method!r} is unknown; use one of {', '.join(METHODS)}")
        for name, value in {**METHOD_DEFAULTS["bbt"], **METHOD_DEFAULTS.get(self.method, {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lr is None:
            self.lr = 1e-4
        if self.prompt_length is None and self.method != "icl_search":  # icl_search: set from the task's labels
            self.prompt_length = 10
        if (self.task is None) == (self.dataset is None):
            fail("task", "give exactly one of a bundled task (--task) or a dataset file (--dataset)")
        if self.dataset is not None and (not self.template or not self.verbalizer):
            fail("template", "a dataset file needs --template and --verbalizer")
        for name in ("budget", "popsize", "k_shot", "dim", "n_tokens", "dev_every", "icl_shots", "prompt_length",
                     "vocab_size", "ngram_max", "ngram_min_count", "top_k", "mlp_hidden"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                fail(name, f"must be >= 1 (got {getattr(self, name)})")
        if self.method in SEARCH_METHODS and self.budget < self.popsize:
            fail("budget", f"must be at least popsize ({self.popsize}) calls")
        if self.method in DISCRETE_METHODS and self.popsize < 2:
            fail("popsize", "discrete methods need at least 2 samples per step (the baseline is their mean)")
        if not (self.lr > 0 and self.lr < 1):
            fail("lr", f"must be in (0, 1) (got {self.lr})")
        if self.endpoint is not None:
            from clients.remote import EndpointConfig, EndpointConfigError

            try:
                EndpointConfig.from_dict(self.endpoint)
            except EndpointConfigError as exc:
                fail("endpoint", str(exc))
            if self.method == "bbtv2":
                fail("method", "bbtv2 injects prompts before every layer, which no remote endpoint accepts; run it on "
                               "this service's workers, or use bbpl, rlprompt, icl_search, manual or icl")
            if self.method == "bbt" and (self.endpoint.get("kind") != "vllm" or self.mode != "cat"):
                fail("method", "bbt sends soft prompts (embeddings): a text-only endpoint cannot take them; use bbpl, "
                               "rlprompt, icl_search, manual or icl, or a vllm endpoint with mode 'cat'")
            if self.method == "bbt" and not self.endpoint.get("embedder_model"):
                fail("endpoint", "bbt on vllm builds prompt_embeds here: set endpoint.embedder_model to the served "
                                 "model's weights (a built-in model name or a local path)")
        if self.sigma0 <= 0 or self.alpha <= 0:
            fail("sigma0", "sigma0 and alpha must be > 0")
        if self.loss not in ("ce", "hinge", "perf"):
            fail("loss", f"{self.loss!r} is unknown; use ce, hinge or perf")
        if self.mode not in ("cat", "add"):
            fail("mode", f"{self.mode!r} is unknown for bbt; use cat or add (bbtv2 always injects deep prompts)")
        if self.distribution not in ("normal", "uniform"):
            fail("distribution", "use normal or uniform")
        if self.dtype not in ("bf16", "fp16", "fp32"):
            fail("dtype", "use bf16, fp16 or fp32")
        if not (self.optimizer == "cma" or self.optimizer.startswith("ng:")):
            fail("optimizer", f"{self.optimizer!r} is unknown; use cma or ng:<nevergrad optimizer>, e.g. ng:NGOpt")
        if self.optimizer.startswith("ng:") and self.method in SEARCH_METHODS:
            from optimizers import check_nevergrad_name

            try:
                check_nevergrad_name(self.optimizer)
            except ValueError as exc:
                fail("optimizer", str(exc))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown option; known options are {', '.join(sorted(known))}")
        return cls(**data).validate()
