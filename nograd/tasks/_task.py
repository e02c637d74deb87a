"""The ``Task`` record: labels, verbalizer, template, metric and data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nograd.tasks._errors import TaskError
from nograd.tasks._example import Example
from nograd.tasks._template import validate_template

METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class Task:
    """A classification task for prompt tuning.

    Attributes:
        name: Short name, e.g. "mr".
        labels: The labels in a fixed order (label index i is ``labels[i]``).
        verbalizer: Label -> the word the model should produce at ``{mask}``.
        template: Prompt template, see ``nograd.tasks.validate_template``.
        metric: "accuracy" or "macro_f1".
        pool: Examples that few-shot train/dev sets are drawn from.
        test: Held-out evaluation examples (may be empty), disjoint from ``pool``.
        version: Data version; changes whenever the data changes.
        fields: ("text",) or ("text", "text2").
        test_fraction: The share of each label's file rows held out as ``test`` (0.0: no split, a separate test
            file, or a bundled task); a run records it, so reloading the file with it gives the same split.
        notes: What loading chose on the user's behalf, in words (e.g. the automatic test split), for a run to
            show and record.

    Raises:
        TaskError: on construction, if any of the above is inconsistent.
    """

    name: str
    labels: tuple[str, ...]
    verbalizer: dict[str, str]
    template: str
    metric: str
    pool: tuple[Example, ...]
    test: tuple[Example, ...]
    version: str
    fields: tuple[str, ...] = ("text",)
    test_fraction: float = 0.0
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("labels", "pool", "test", "fields", "notes"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        object.__setattr__(self, "verbalizer", dict(self.verbalizer))
        if not self.name:
            raise TaskError("task name is empty; give the task a name")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise TaskError(f"task {self.name!r}: labels must be at least two distinct strings, got {self.labels}")
        if set(self.verbalizer) != set(self.labels):
            raise TaskError(
                f"task {self.name!r}: verbalizer keys {sorted(self.verbalizer)} "
                f"must equal the labels {sorted(self.labels)}"
            )
        words = list(self.verbalizer.values())
        if any(not w.strip() for w in words) or len(set(words)) != len(words):
            raise TaskError(
                f"task {self.name!r}: verbalizer words must be non-empty and distinct, got {self.verbalizer}"
            )
        if self.metric not in METRICS:
            raise TaskError(f"task {self.name!r}: unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        validate_template(self.template, self.fields)
        known, pair = set(self.labels), len(self.fields) == 2
        for split in ("pool", "test"):
            for i, ex in enumerate(getattr(self, split)):
                if ex.label not in known:
                    raise TaskError(
                        f"task {self.name!r}: {split} example {i} has label {ex.label!r}, not one of {self.labels}"
                    )
                if (ex.text2 is not None) != pair:
                    raise TaskError(
                        f"task {self.name!r}: {split} example {i} "
                        f"{'lacks' if pair else 'has'} text2 but fields are "
                        f"{self.fields}"
                    )

    def label_index(self, label: str) -> int:
        """Returns the position of ``label`` in ``labels``.

        Raises:
            TaskError: if ``label`` is not a label of this task.
        """
        try:
            return self.labels.index(label)
        except ValueError:
            raise TaskError(f"task {self.name!r} has no label {label!r}; labels are {', '.join(self.labels)}") from None

    def pool_counts(self) -> dict[str, int]:
        """Pool examples per label, in label order."""
        counts = dict.fromkeys(self.labels, 0)
        for ex in self.pool:
            counts[ex.label] += 1
        return counts

    def max_k_shot(self) -> int:
        """The largest k that ``few_shot`` accepts (0: some label has fewer than 2 pool examples)."""
        return min(self.pool_counts().values()) // 2

    def few_shot(self, k: int, seed: int) -> tuple[list[Example], list[Example]]:
        """Samples k examples per class for training and a disjoint k per class for dev.

        Both lists are shuffled (not grouped by class). The same ``seed`` always gives the
        same lists, as in the BBT paper's few-shot setting.

        Args:
            k: Examples per class in each of train and dev.
            seed: Seed for ``np.random.default_rng``.

        Returns:
            (train, dev), each with ``k * len(labels)`` examples.

        Raises:
            TaskError: if ``k`` < 1 or a class has fewer than ``2 * k`` pool examples.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise TaskError(f"k must be a positive integer, got {k!r}")
        by_label: dict[str, list[int]] = {label: [] for label in self.labels}
        for i, ex in enumerate(self.pool):
            by_label[ex.label].append(i)
        short = {lab: len(idx) for lab, idx in by_label.items() if len(idx) < 2 * k}
        if short:
            listed = ", ".join(f"{lab!r} has {n}" for lab, n in short.items())
            raise TaskError(
                f"task {self.name!r}: k={k} needs {2 * k} pool examples per class "
                f"(k train + k dev) but {listed}; use k <= "
                f"{min(len(v) for v in by_label.values()) // 2} or add data"
            )
        rng = np.random.default_rng(seed)
        train, dev = [], []
        for label in self.labels:
            idx = by_label[label]
            picked = rng.choice(len(idx), 2 * k, replace=False)
            train += [idx[j] for j in picked[:k]]
            dev += [idx[j] for j in picked[k:]]
        return ([self.pool[i] for i in rng.permutation(train)], [self.pool[i] for i in rng.permutation(dev)])
