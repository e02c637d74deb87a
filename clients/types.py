"""Plain-data types of the evaluation contract, shared by every model endpoint and by the engine.

The wire format follows the BBT paper: a client sends the task examples once and, per candidate, only the
low-dimensional vector `z` (d floats); the endpoint owns the random projection `A` (rebuilt from a
`ProjectionSpec`) and returns label-word logits, losses and the metric. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

PromptMode = Literal["none", "cat", "add", "deep", "text", "demos"]
LossName = Literal["ce", "hinge", "perf"]
METRICS = ("accuracy", "macro_f1")
LOSSES = ("ce", "hinge", "perf")
#: Prompt modes that send soft prompts (embeddings), and the discrete ones (text or demonstration choices).
SOFT_MODES = ("cat", "add", "deep")
DISCRETE_MODES = ("text", "demos")
PROMPT_MODES = ("none", *SOFT_MODES, *DISCRETE_MODES)


class InvalidRequest(ValueError):
    """The request cannot be scored as sent (a malformed candidate, a text too long for the model, label words
    the model cannot tell apart, ...). Retrying cannot help; the message names what is wrong and the fix."""


@dataclass(frozen=True)
class ProjectionSpec:
    """How the endpoint builds the fixed random projection A: R^d -> R^(n_tokens x hidden), one per layer.

    `normal`: entries ~ N(0, std), std = alpha * s / (sqrt(d) * sigma0), s the std of the embedding matrix (or of
    the hidden states entering the layer, for deep prompts), so each prompt coordinate starts with std ~ alpha * s
    when z ~ N(0, sigma0^2). `uniform`: the BBT paper's U(-1/sqrt(d), 1/sqrt(d)) (torch Linear default init).
    """

    seed: int = 0
    dim: int = 500
    distribution: Literal["normal", "uniform"] = "normal"
    alpha: float = 1.0
    sigma0: float = 1.0


@dataclass(frozen=True)
class PromptSpec:
    """Where and how a candidate becomes a prompt.

    mode: `none` (no soft prompt), `cat` (prompt = A z + p0 occupies `n_tokens` inserted positions), `add`
        (A z is added to the embeddings of `n_tokens` placeholder tokens), `deep` (BBTv2: a prompt added to the
        hidden states at the placeholder positions before every layer); the discrete modes `text` (each candidate
        is a prompt string, `EvalRequest.texts`, put at `{prompt}` or, without that field, before everything else
        followed by a newline) and `demos` (each candidate is a row of indices into `TaskSpec.demos`, the
        demonstrations shown in that order; -1 entries are skipped). Discrete modes need no embeddings, so
        text-only endpoints (remote LLM APIs) serve them.
    init: text whose tokens are the placeholders (`add`/`deep`) or whose embeddings are p0 (`cat`); its token
        count overrides `n_tokens`. None: vocabulary ids 1000.. as in BBT (`add`/`deep`), p0 = 0 (`cat`).
    scales: the per-layer scale s of the projection (one value for `cat`/`add`, one per layer for `deep`). None:
        the endpoint derives them (embedding std; BBTv2's clipped hidden-state std on the request's examples) and
        returns them in `EvalResult.scales`; pin them in the spec so dev/test use the same projection.
    """

    mode: PromptMode = "none"
    n_tokens: int = 50
    projection: ProjectionSpec = field(default_factory=ProjectionSpec)
    init: str | None = None
    scales: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        data = dict(data)
        data["projection"] = ProjectionSpec(**data.get("projection", {}))
        if data.get("scales") is not None:
            data["scales"] = tuple(float(s) for s in data["scales"])
        return cls(**data)


@dataclass(frozen=True)
class TaskSpec:
    """How examples become model inputs: template, label words, metric, optional ICL demonstrations.

    template: uses `{text}`, optional `{text2}`, `{mask}` where the label word goes, optional `{prompt}` (where the
        soft prompt goes; default: at the very start); `{{` and `}}` stand for literal braces. Causal LMs score the
        next token after the text before `{mask}`; masked LMs score at the mask token. `nograd.clients.render` turns a
        template and an example into text, the same way for every endpoint.
    verbalizer: one word per label, in label order; each label is scored by its word's first token.
    demos: (text, text2, label index) triples shown before the input (in-context learning).
    chat: score under the model's chat template: the rendered text is the user message and the label word is the
        first token of the assistant's answer (`tokenizer.apply_chat_template` locally, the chat API remotely).
    """

    template: str
    labels: tuple[str, ...]
    verbalizer: tuple[str, ...]
    metric: str = "accuracy"
    demos: tuple[tuple[str, str | None, int], ...] = ()
    demo_separator: str = "\n\n"
    chat: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        data = dict(data)
        data["labels"], data["verbalizer"] = tuple(data["labels"]), tuple(data["verbalizer"])
        data["demos"] = tuple((d[0], d[1], int(d[2])) for d in data.get("demos", ()))
        return cls(**data)


@dataclass
class Examples:
    """A batch of examples: texts, optional second texts, label indices (into TaskSpec.labels)."""

    texts: list[str]
    labels: list[int]
    texts2: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def part(self, start: int, stop: int) -> Examples:
        """Examples [start, stop)."""
        return Examples(
            texts=self.texts[start:stop],
            labels=self.labels[start:stop],
            texts2=None if self.texts2 is None else self.texts2[start:stop],
        )

    def take(self, indices) -> Examples:
        """The examples at `indices`, in that order (a racing round's slice of the training batch)."""
        picked = [int(i) for i in indices]
        return Examples(
            texts=[self.texts[i] for i in picked],
            labels=[self.labels[i] for i in picked],
            texts2=None if self.texts2 is None else [self.texts2[i] for i in picked],
        )


@dataclass
class EvalRequest:
    """Score a population of candidates on a batch of examples.

    z: (P, d) candidate vectors for `cat`/`add`, or for `deep` the vectors of layer `layer` (other layers fixed
        at `base`); for `demos`, (P, k) demonstration indices. None means one candidate: z = 0 (or just `base` for
        deep; no prompt for `none`; every demonstration in order for `demos`).
    texts: the P candidate prompt strings of `text` mode.
    base: (L, d) per-layer vectors for `deep`.
    generation: the search generation this evaluation belongs to (queues and dashboards show it; 0 = initial).
    """

    task: TaskSpec
    examples: Examples
    prompt: PromptSpec = field(default_factory=PromptSpec)
    z: np.ndarray | None = None
    layer: int | None = None
    base: np.ndarray | None = None
    loss: LossName = "ce"
    texts: list[str] | None = None
    generation: int = 0

    @property
    def population(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        return 1 if self.z is None else int(np.asarray(self.z).shape[0])

    def part(self, start: int, stop: int) -> EvalRequest:
        """The same request for candidates [start, stop) only."""
        return EvalRequest(
            self.task,
            self.examples,
            self.prompt,
            z=None if self.z is None else np.asarray(self.z)[start:stop],
            layer=self.layer,
            base=self.base,
            loss=self.loss,
            texts=None if self.texts is None else list(self.texts[start:stop]),
            generation=self.generation,
        )


@dataclass
class EvalResult:
    """Per-candidate results; build one with `nograd.clients.losses.score_logits`.

    logits: (P, E, K) label-word logits; loss/metric: (P,); losses: every loss kind, (P,) each.
    usage: what a remote API charged and reported (`prompt_tokens`, `completion_tokens`, `requests`,
    `rescored_label_words`: label words asked for again with logit_bias, `missing_label_words`: label words that
    got no score of their own and were set to the floor); None for endpoints that charge nothing.
    """

    loss: np.ndarray
    metric: np.ndarray
    losses: dict[str, np.ndarray]
    logits: np.ndarray
    model_id: str = ""
    seconds: float = 0.0
    scales: tuple[float, ...] | None = None
    usage: dict[str, int] | None = None


@dataclass(frozen=True)
class TokenNeighbor:
    """A vocabulary token close to one soft-prompt position: its id, its text (the token decoded alone) and the
    cosine similarity (fp32) of its input embedding to the position's embedding. A hint of what a soft prompt
    resembles, not what the model reads: soft positions are rarely near any token."""

    id: int
    token: str
    similarity: float


@dataclass(frozen=True)
class ModelInfo:
    """What an endpoint serves. prompt_modes: the `PromptSpec.mode`s it scores (text-only APIs: the discrete ones
    and `none`)."""

    model_id: str
    kind: str
    hidden_size: int
    n_layers: int
    max_length: int
    prompt_modes: tuple[str, ...] = PROMPT_MODES
    device: str = "cpu"
    dtype: str = "fp32"

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        data = dict(data)
        data.pop("supports_embeddings", None)  # heartbeats of v0.1 workers
        if "prompt_modes" in data:
            data["prompt_modes"] = tuple(data["prompt_modes"])
        return cls(**data)
