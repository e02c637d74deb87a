"""The method registry, and resolving a run's options once into the settings it runs with.

`METHODS` is the one table of methods: each one's search class, defaults, prompt kind (which says whether it needs
embeddings and which endpoint kinds serve it), its demonstrations, and whether its prompts can start another job.
The CLI, the REST schema, validation and the dashboards read it.

`resolve(config, task)` returns a new, immutable `ResolvedConfig` with every default filled in and every
cross-field rule checked (errors name the field); nothing downstream re-derives a setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from nograd.clients.endpoint import EndpointConfigError
from nograd.clients.kinds import ENDPOINT_KINDS, parse_endpoint
from nograd.clients.types import Examples, TaskSpec
from nograd.optimizers import check_nevergrad_name
from nograd.tasks import Task

from . import racing
from .config import ConfigError, ResolvedConfig, RunConfig
from .discrete import BBPLSearch, ICLSearch, RLPromptSearch
from .search import PromptSearch

#: What a method's candidates are: no prompt, a soft prompt at the input (`mode` cat/add), deep prompts before
#: every layer, a prompt text, or a choice of demonstrations.
PromptKind = Literal["none", "soft", "deep", "text", "demos"]
Default = Any | Callable[[RunConfig, Task], Any]


@dataclass(frozen=True)
class Method:
    """One method.

    Attributes:
        name: the `method` option's value.
        description: one line for help texts and the schema.
        prompt: what the candidates are (`PromptKind`).
        search: the search class (None: a baseline that scores the task's template as it is).
        defaults: option -> value, or a function of (config, task), for options left at None.
        demos: the task's demonstrations: `sample` (icl_shots per class, seeded) or `pool` (every training
            example, for a search to choose from); None: none.
        transfers: its prompts can start another job of the same method (`init_from`).
        options: the job options it reads (`nograd.config.JOB_OPTIONS`; the others do not change its result).
        when: one line on when to pick it, for the dashboard's Submit form and help texts.
    """

    name: str
    description: str
    prompt: PromptKind
    search: type[PromptSearch] | None = None
    defaults: Mapping[str, Default] = field(default_factory=dict)
    demos: Literal["sample", "pool"] | None = None
    transfers: bool = False
    options: tuple[str, ...] = ()
    when: str = ""

    @property
    def is_search(self) -> bool:
        return self.search is not None

    @property
    def needs_embeddings(self) -> bool:
        """Whether candidates are soft prompts, which only endpoints that take embeddings serve."""
        return self.prompt in ("soft", "deep")

    def prompt_mode(self, config: RunConfig) -> str:
        """The `PromptSpec.mode` its requests use."""
        return {"soft": config.mode, "deep": "deep"}.get(self.prompt, self.prompt)

    def endpoint_kinds(self, config: RunConfig) -> tuple[str, ...]:
        """The remote endpoint kinds that serve it with these options (this service's own workers serve all)."""
        mode = self.prompt_mode(config)
        return tuple(name for name, cls in ENDPOINT_KINDS.items() if mode in cls.prompt_modes)


_SOFT = (
    "popsize",
    "optimizer",
    "sigma0",
    "alpha",
    "bounds",
    "loss",
    "n_tokens",
    "dim",
    "distribution",
    "init",
    "chat_template",
    "racing",
)
_BBPL = (
    "popsize",
    "racing",
    "loss",
    "prompt_length",
    "lr",
    "vocab_size",
    "ngram_max",
    "ngram_min_count",
    "min_pmi",
    "chat_template",
)
_RLPROMPT = (
    "popsize",
    "racing",
    "prompt_length",
    "lr",
    "top_k",
    "mlp_hidden",
    "reward_correct",
    "reward_wrong",
    "chat_template",
)
_ICL_SEARCH = ("popsize", "racing", "loss", "icl_shots", "prompt_length", "lr", "chat_template")

#: k_shot when the user leaves it unset (the BBT paper's few-shot setting); a smaller file gets the most it allows.
DEFAULT_K_SHOT = 16

#: Options every method falls back to when neither it nor the user sets them.
COMMON_DEFAULTS: Mapping[str, Default] = {"alpha": 0.5, "popsize": 20, "lr": 1e-4, "prompt_length": 10}

# Defaults as used for bench/quality.py: BBT's alpha after a small sweep (see README); BBTv2's alpha from its
# README and a smaller population so a few hundred calls reach every layer; BBPL and RLPrompt: the papers'
# defaults (../shared/algorithms.md); ICL search: BBPL's machinery over the training examples, lr scaled with the
# pool size (probabilities start at 1/32, not 1/200), as many positions as the ICL baseline shows demonstrations.
METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Method(
            "bbt",
            "a soft prompt A z (+ p0) at the input; CMA-ES or nevergrad over z",
            "soft",
            PromptSearch,
            {"alpha": 0.5, "popsize": 20},
            transfers=True,
            options=(*_SOFT, "mode"),
            when="the first search to try on this service's own workers: a soft prompt in a few hundred calls",
        ),
        Method(
            "bbtv2",
            "deep prompts before every layer, one z per layer, optimized layer by layer",
            "deep",
            PromptSearch,
            {"alpha": 0.2, "popsize": 10},
            transfers=True,
            options=_SOFT,
            when="when bbt levels off and the budget allows more calls: prompts in every layer, more capacity",
        ),
        Method(
            "bbpl",
            "a categorical distribution per position over PMI n-grams, by policy gradient",
            "text",
            BBPLSearch,
            {"popsize": 20, "lr": 1e-4, "prompt_length": 10},
            options=_BBPL,
            when="for a text-only remote API (OpenAI-compatible, vLLM): a readable prompt made of your data's phrases",
        ),
        Method(
            "rlprompt",
            "a frozen small LM plus a trained MLP samples discrete prompts",
            "text",
            RLPromptSearch,
            {"popsize": 16, "lr": 5e-5, "prompt_length": 5},
            options=_RLPROMPT,
            when="for a text-only API when a short token prompt is wanted; needs the policy LM and more calls",
        ),
        Method(
            "icl_search",
            "which training examples to show as demonstrations, in which order",
            "demos",
            ICLSearch,
            {"popsize": 20, "lr": 1e-3, "prompt_length": lambda config, task: config.icl_shots * len(task.labels)},
            demos="pool",
            options=_ICL_SEARCH,
            when="when demonstrations help the model: picks which training examples to show; works on text-only APIs",
        ),
        Method(
            "manual",
            "the task's template and verbalizer alone",
            "none",
            options=("chat_template",),
            when="a baseline (no search, no budget): run it first to see what the template alone scores",
        ),
        Method(
            "icl",
            "icl_shots training demonstrations per class before the input",
            "none",
            demos="sample",
            options=("icl_shots", "chat_template"),
            when="a baseline: a few random demonstrations, the bar a search should beat",
        ),
    )
}


def method_of(name: str) -> Method:
    """The registry entry of `name`; raises ConfigError naming the valid methods."""
    if name not in METHODS:
        raise ConfigError("method", f"{name!r} is unknown; use one of {', '.join(METHODS)}")
    return METHODS[name]


def resolve(config: RunConfig, task: Task) -> ResolvedConfig:
    """The settings `config` runs with on `task`: defaults filled in, every rule checked (ConfigError)."""
    method = method_of(config.method)
    values = asdict(config)
    for name, default in {**COMMON_DEFAULTS, **method.defaults}.items():
        if values[name] is None:
            values[name] = default(config, task) if callable(default) else default
    values.update(_data(config, task))
    if method.is_search and config.budget < values["popsize"]:
        raise ConfigError("budget", f"must be at least popsize ({values['popsize']}) calls")
    if method.prompt in ("soft", "deep") and config.optimizer == "cma" and values["popsize"] < 3:
        raise ConfigError("popsize", "CMA-ES needs at least 3 candidates per generation (pycma fails on 2)")
    if method.name == "icl_search" and values["prompt_length"] >= values["k_shot"] * len(task.labels):
        train = values["k_shot"] * len(task.labels)
        raise ConfigError(
            "prompt_length",
            f"icl_search would show {values['prompt_length']} demonstrations out of {train} training examples, "
            "and scores each candidate on the examples it does not show: use fewer (prompt_length or icl_shots) "
            "or a larger k_shot",
        )
    if config.racing and method.is_search:
        _check_racing(method, values, values["k_shot"] * len(task.labels))
    if config.optimizer != "cma" and not config.optimizer.startswith("ng:"):
        raise ConfigError(
            "optimizer", f"{config.optimizer!r} is unknown; use cma or ng:<nevergrad optimizer>, e.g. ng:NGOpt"
        )
    if config.optimizer.startswith("ng:") and method.is_search:
        try:
            check_nevergrad_name(config.optimizer)
        except ValueError as exc:
            raise ConfigError("optimizer", str(exc)) from None
    values.update(_endpoint(method, config))
    return ResolvedConfig(**values)


def _check_racing(method: Method, values: dict[str, Any], train: int) -> None:
    """Racing's rules (`nograd.racing`): every round must see at least one example and one candidate, and an
    icl_search candidate must leave some of the first round's examples unshown to be scored on them."""
    if train < racing.MIN_EXAMPLES:
        raise ConfigError(
            "racing",
            f"racing scores candidates on quarters of the training batch and needs at least {racing.MIN_EXAMPLES} "
            f"training examples; this run has {train} (k_shot x labels): raise k_shot or turn racing off",
        )
    if values["popsize"] < racing.MIN_POPSIZE:
        raise ConfigError(
            "racing",
            f"racing halves the population twice and needs popsize >= {racing.MIN_POPSIZE}, not "
            f"{values['popsize']}: raise popsize or turn racing off",
        )
    first = racing.slice_bounds(train)[0][1]
    if method.name == "icl_search" and values["prompt_length"] >= first:
        raise ConfigError(
            "racing",
            f"racing's first round scores each candidate on {first} training examples and icl_search leaves out "
            f"the ones a candidate shows, so it must show fewer than {first} (prompt_length is "
            f"{values['prompt_length']}): lower prompt_length or icl_shots, raise k_shot, or turn racing off",
        )


def _data(config: RunConfig, task: Task) -> dict[str, Any]:
    """The data settings: `k_shot` (unset: DEFAULT_K_SHOT, lowered to what the task's pool allows), the test
    fraction the task was split with, and the notes of what was chosen for the user."""
    fits, counts = task.max_k_shot(), task.pool_counts()
    label = min(counts, key=counts.get)
    held = f" after the test split held out {len(task.test)} rows" if task.test_fraction else ""
    if fits < 1:
        raise ConfigError(
            "dataset" if config.dataset else "k_shot",
            f"label {label!r} has {counts[label]} row(s) for train and dev{held}; few-shot needs at least 2 per label "
            "(1 train + 1 dev): add rows" + (" or lower test_fraction" if held else ""),
        )
    notes = list(task.notes)
    k_shot = config.k_shot
    if k_shot is None:
        k_shot = min(DEFAULT_K_SHOT, fits)
        if k_shot < DEFAULT_K_SHOT:
            notes.append(
                f"k_shot lowered from {DEFAULT_K_SHOT} to {k_shot}: label {label!r} has {counts[label]} rows for "
                f"train and dev{held} (k_shot takes 2 x k_shot per label); add rows or set k_shot"
            )
    elif k_shot > fits:
        raise ConfigError(
            "k_shot",
            f"k_shot={k_shot} needs {2 * k_shot} rows per label (k train + k dev) but label {label!r} has "
            f"{counts[label]}{held}; the largest k_shot that fits is {fits}"
            + (" (or lower test_fraction)" if held else ""),
        )
    return {"k_shot": k_shot, "test_fraction": task.test_fraction, "notes": tuple(notes)}


def _endpoint(method: Method, config: RunConfig) -> dict[str, Any]:
    """The resolved `endpoint` (every setting filled in) and `chat_template`."""
    if config.endpoint is None:
        return {"chat_template": bool(config.chat_template)}
    try:
        endpoint = parse_endpoint(config.endpoint)
    except EndpointConfigError as exc:
        raise ConfigError(f"endpoint.{exc.field}" if exc.field else "endpoint", exc.message) from None
    mode = method.prompt_mode(config)
    kind = ENDPOINT_KINDS[endpoint.kind]
    if mode not in kind.prompt_modes:
        others = ", ".join(m.name for m in METHODS.values() if m.prompt_mode(config) in kind.prompt_modes)
        if method.prompt == "deep":
            why = f"{method.name} injects prompts before every layer, which no remote endpoint accepts"
        else:
            why = f"{method.name} sends soft prompts (embeddings): a {endpoint.kind} endpoint cannot take them"
        takers = [
            f"a {name} endpoint with mode {m!r}"
            for name, cls in ENDPOINT_KINDS.items()
            for m in cls.prompt_modes
            if method.prompt == "soft" and m in ("cat", "add")
        ]
        raise ConfigError(
            "method", f"{why}; run it on this service's workers{''.join(', ' + t for t in takers)}, or use {others}"
        )
    chat = config.chat_template
    if method.needs_embeddings:
        if kind.embeds_locally and not endpoint.embedder_model:
            raise ConfigError(
                "endpoint.embedder_model",
                f"{method.name} on {endpoint.kind} builds prompt_embeds "
                "here: set it to the served model's weights (a built-in model name or a local path)",
            )
        if endpoint.api != "completions":
            raise ConfigError(
                "endpoint.api",
                "soft prompts go out as prompt_embeds on the completions API; set api "
                "to completions (chat_template applies the chat template to them)",
            )
        chat = bool(chat)
    else:
        served_chat = endpoint.api == "chat"
        if chat is None:
            chat = served_chat
        elif chat != served_chat:
            raise ConfigError(
                "chat_template",
                f"a {endpoint.api} endpoint scores "
                f"{'under' if served_chat else 'without'} the model's chat template; set endpoint.api "
                f"to {'chat' if chat else 'completions'} or leave chat_template unset",
            )
    return {"endpoint": asdict(endpoint), "chat_template": chat}


def make_search(
    config: ResolvedConfig, task: TaskSpec, train: Examples, dev: Examples, n_layers: int, **init: Any
) -> PromptSearch | None:
    """The search `config.method` runs (None for a baseline); `init`: `init_x`/`init_spec` of a transfer."""
    method = METHODS[config.method]
    if method.search is None:
        return None
    return method.search(config, task, train, dev, n_layers, mode=method.prompt_mode(config), **init)


__all__ = [
    "COMMON_DEFAULTS",
    "DEFAULT_K_SHOT",
    "METHODS",
    "Method",
    "PromptKind",
    "make_search",
    "method_of",
    "resolve",
]
