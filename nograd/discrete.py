"""Discrete prompt searches: BBPL, ICL demonstration search and RLPrompt, on the same loop as BBT.

Every candidate is a row of choices; -1 means "nothing here", so the all -1 row is the manual prompt, which is
the initial contender (the result is never worse on dev than the manual prompt). Candidates reach the endpoint as
text (`text` mode: BBPL's n-grams joined by spaces, RLPrompt's decoded tokens) or as demonstration indices
(`demos` mode), so every discrete method runs on text-only endpoints (remote LLM APIs) too.
"""

from __future__ import annotations

import numpy as np

from nograd.clients.losses import all_losses
from nograd.clients.types import EvalRequest, Examples, PromptSpec, TaskSpec
from nograd.engine.factory import shared_handle
from nograd.optimizers import PolicyGradient

from .config import ResolvedConfig
from .search import PromptSearch
from .vocab import pmi_ngrams


class DiscreteSearch(PromptSearch):
    """Shared pieces: the all -1 start, text requests, no projection. Subclasses set `optimizer`, `spec`."""

    def __init__(
        self,
        config: ResolvedConfig,
        task: TaskSpec,
        train: Examples,
        dev: Examples,
        n_layers: int,
        *,
        mode: str,
        init_x: np.ndarray | None = None,
        init_spec: PromptSpec | None = None,
    ):
        if init_x is not None or init_spec is not None:
            raise ValueError("init_from: only soft prompts (bbt, bbtv2) start from another job's prompt")
        self.config, self.task, self.train, self.dev = config, task, train, dev
        self.deep, self.n_layers, self.init_x = False, n_layers, None
        self.spec = PromptSpec(mode=mode)
        self._reset_progress()

    def _zero(self) -> np.ndarray:
        return np.full(self.config.prompt_length, -1.0)

    def _request(
        self,
        examples: Examples,
        x: np.ndarray | None = None,
        *,
        population: np.ndarray | None = None,
        layer: int | None = None,
        base: np.ndarray | None = None,
        generation: int | None = None,
    ) -> EvalRequest:
        rows = np.asarray(x)[None] if x is not None else np.asarray(population)
        return EvalRequest(
            self.task,
            examples,
            self.spec,
            loss=self.config.loss,
            generation=self.generation if generation is None else generation,
            **self._candidates(rows),
        )

    def _candidates(self, rows: np.ndarray) -> dict:
        """The request fields that carry these choice rows: the prompt texts (`text` mode)."""
        return {"texts": [self.prompt_text(row) for row in rows]}


class BBPLSearch(DiscreteSearch):
    """BBPL: one categorical distribution per prompt position over PMI n-grams of the training text."""

    def __init__(self, config: ResolvedConfig, task: TaskSpec, train: Examples, dev: Examples, n_layers: int, **kw):
        super().__init__(config, task, train, dev, n_layers, **kw)
        texts = list(train.texts) + list(train.texts2 or [])
        self.vocab = pmi_ngrams(
            texts,
            max_n=config.ngram_max,
            min_count=config.ngram_min_count,
            min_pmi=config.min_pmi,
            top=config.vocab_size,
        )
        if len(self.vocab) < 2:
            raise ValueError(
                "vocab_size: the training text gives fewer than 2 candidate n-grams; lower "
                "ngram_min_count or use more training examples"
            )
        self.optimizer = PolicyGradient(
            config.prompt_length, len(self.vocab), config.popsize, lr=config.lr, seed=config.seed, budget=config.budget
        )

    def prompt_text(self, x: np.ndarray) -> str:
        return " ".join(self.vocab[int(i)] for i in x if i >= 0)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "vocab": list(self.vocab)}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.vocab = list(state["vocab"])


class ICLSearch(DiscreteSearch):
    """In-context demonstration search: which k training examples to show, in which order.

    The task's demonstrations are the pool (the training examples, in order). Scoring a training example with
    itself among the demonstrations would reward copying, so a candidate's training loss leaves out the examples
    it shows. Positions that repeat an earlier choice are dropped.
    """

    def __init__(self, config: ResolvedConfig, task: TaskSpec, train: Examples, dev: Examples, n_layers: int, **kw):
        super().__init__(config, task, train, dev, n_layers, **kw)
        if len(task.demos) != len(train):
            raise ValueError("icl_search: the task's demonstration pool must be the training examples")
        self.optimizer = PolicyGradient(
            config.prompt_length, len(task.demos), config.popsize, lr=config.lr, seed=config.seed, budget=config.budget
        )

    @staticmethod
    def _unique(row: np.ndarray) -> np.ndarray:
        seen, out = set(), []
        for i in np.asarray(row, dtype=np.int64):
            out.append(-1 if i < 0 or i in seen else int(i))
            seen.add(int(i))
        return np.asarray(out, dtype=np.float64)

    def _candidates(self, rows: np.ndarray) -> dict:
        """Demonstration indices (`demos` mode), repeated choices dropped."""
        return {"z": np.stack([self._unique(r) for r in rows])}

    def _objective(self, logits: np.ndarray, columns: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """The run's loss on the examples among `columns` that the candidate does not show."""
        labels = np.asarray(self.train.labels)[columns]
        out = []
        for candidate_logits, row in zip(np.asarray(logits, dtype=np.float64), scored):
            shown = {int(i) for i in row if i >= 0}
            keep = np.asarray([int(c) not in shown for c in columns], dtype=bool)
            losses, _ = all_losses(candidate_logits[keep][None], labels[keep], self.task.metric)
            out.append(float(losses[self.config.loss][0]))
        return np.asarray(out)

    def result(self) -> dict:
        """As `PromptSearch.result`, with the chosen row as it was scored (repeated choices dropped)."""
        outcome = super().result()
        return {**outcome, "x": self._unique(outcome["x"])}

    def prompt_text(self, x: np.ndarray) -> str:
        chosen = [int(i) for i in self._unique(x) if i >= 0]
        return "demonstrations: " + (", ".join(f"train #{i}" for i in chosen) if chosen else "none")


class RLPromptSearch(DiscreteSearch):
    """RLPrompt: prompts sampled from a frozen small LM with a trainable MLP (see `nograd.rlprompt`)."""

    def __init__(self, config: ResolvedConfig, task: TaskSpec, train: Examples, dev: Examples, n_layers: int, **kw):
        super().__init__(config, task, train, dev, n_layers, **kw)
        from .rlprompt import RLPromptPolicy  # torch: loaded only when an RLPrompt search runs

        policy = shared_handle(config.policy_model)  # fp32 on the CPU: it only scores a few short sequences
        self._model, self._tokenizer = policy.model, policy.tokenizer
        self.optimizer = RLPromptPolicy(
            self._model,
            self._tokenizer,
            length=config.prompt_length,
            popsize=config.popsize,
            top_k=config.top_k,
            lr=config.lr,
            hidden=config.mlp_hidden,
            seed=config.seed,
        )

    def _objective(self, logits: np.ndarray, columns: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """Minus RLPrompt's reward on the training examples `columns`."""
        from .rlprompt import reward  # torch: see __init__

        return -reward(
            np.asarray(logits),
            np.asarray(self.train.labels)[columns],
            self.config.reward_correct,
            self.config.reward_wrong,
        )

    def _entry_extra(self, result) -> dict:
        return {"objective": "-reward"}

    def prompt_text(self, x: np.ndarray) -> str:
        return self.optimizer.text(x)

    def _optimizer_from_state(self, state: dict):
        from .rlprompt import RLPromptPolicy  # torch: see __init__

        return RLPromptPolicy.from_state(state, self._model, self._tokenizer)


__all__ = ["BBPLSearch", "DiscreteSearch", "ICLSearch", "RLPromptSearch"]
