"""What a finished run learned, as plain data (`analysis.json`, `GET /v1/jobs/{id}/analysis`): the prompt itself,
the test confusion matrices of the tuned prompt and of the manual prompt, and the test examples whose prediction
changed between the two. Pure: numpy and the evaluation contract's types, no I/O.

Invariants: confusion matrices are label x label counts, rows the gold label and columns the prediction, in the
task's label order, so each row sums to that label's number of test examples. `fixed` lists examples the manual
prompt got wrong and the tuned prompt gets right, `broken` the reverse, each in test order and capped at
`MAX_CHANGED`; `n_fixed`/`n_broken` count them all.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from nograd.clients.types import Examples, PromptSpec, TaskSpec, TokenNeighbor

VERSION = 1
#: Changed examples listed per direction (fixed, broken); the counts cover them all.
MAX_CHANGED = 50
#: Characters of an example's text (and of a demonstration's) kept; longer texts end in an ellipsis.
MAX_TEXT = 300
#: Nearest vocabulary tokens listed per soft-prompt position.
NEAREST_K = 5


def truncate(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """`text` cut to at most `limit` characters, the cut marked with an ellipsis."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def confusion(labels: list[int] | np.ndarray, predictions: list[int] | np.ndarray, n_labels: int) -> list[list[int]]:
    """counts[gold][predicted] over the examples."""
    gold, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if gold.shape != predicted.shape:
        raise ValueError(f"{len(gold)} labels but {len(predicted)} predictions")
    if gold.size and (min(gold.min(), predicted.min()) < 0 or max(gold.max(), predicted.max()) >= n_labels):
        raise ValueError(f"labels and predictions must be label indices in [0, {n_labels})")
    counts = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(counts, (gold, predicted), 1)
    return counts.tolist()


def changed_examples(
    examples: Examples, names: tuple[str, ...], manual: list[int], tuned: list[int], *, limit: int = MAX_CHANGED
) -> dict:
    """The examples whose correctness changed from the manual prompt's predictions to the tuned prompt's."""
    gold = np.asarray(examples.labels)
    manual_right, tuned_right = np.asarray(manual) == gold, np.asarray(tuned) == gold
    fixed = np.flatnonzero(~manual_right & tuned_right)
    broken = np.flatnonzero(manual_right & ~tuned_right)

    def entry(i: int) -> dict:
        return {
            "index": int(i),
            "text": truncate(examples.texts[i]),
            "text2": None if examples.texts2 is None else truncate(examples.texts2[i]),
            "gold": names[int(gold[i])],
            "manual": names[int(manual[i])],
            "tuned": names[int(tuned[i])],
        }

    return {
        "fixed": [entry(i) for i in fixed[:limit]],
        "broken": [entry(i) for i in broken[:limit]],
        "n_fixed": int(fixed.size),
        "n_broken": int(broken.size),
        "limit": limit,
    }


def is_manual(task: TaskSpec, prompt: PromptSpec, x: np.ndarray | None, text: str | None) -> bool:
    """Whether the prompt renders exactly as the manual prompt (the template alone): no soft prompt and no
    demonstrations, or a discrete search whose best-dev candidate is its empty start."""
    if prompt.mode == "none":
        return not task.demos
    if prompt.mode == "text":
        return not text
    if prompt.mode == "demos":
        return x is not None and bool(np.all(np.asarray(x) < 0))
    return False


def manual_task(task: TaskSpec) -> TaskSpec:
    """The task the manual prompt is scored with: the same template, label words and metric, no demonstrations."""
    return replace(task, demos=())


def _demonstrations(task: TaskSpec, indices: list[int]) -> list[dict]:
    return [
        {
            "index": i,
            "text": truncate(task.demos[i][0]),
            "text2": truncate(task.demos[i][1]),
            "label": task.labels[task.demos[i][2]],
        }
        for i in indices
    ]


def describe_prompt(
    task: TaskSpec,
    prompt: PromptSpec,
    x: np.ndarray | None,
    text: str | None,
    neighbors: list[list[TokenNeighbor]] | None = None,
) -> dict:
    """The prompt as a reader sees it. kind: `manual` (the template alone), `text` (a discrete prompt put before
    the template or at `{prompt}`), `demos` (demonstrations shown before the input, in order), `soft` (BBT's
    cat/add prompt: `nearest_tokens` per position as a hint, or None when the endpoint could not tell) or `deep`
    (BBTv2's per-layer prompts; no readable form)."""
    out = {
        "template": task.template,
        "verbalizer": dict(zip(task.labels, task.verbalizer)),
        "chat": task.chat,
        "mode": prompt.mode,
    }
    if is_manual(task, prompt, x, text):
        return {**out, "kind": "manual"}
    if prompt.mode == "text":
        return {**out, "kind": "text", "text": text}
    if prompt.mode in ("none", "demos"):  # `none` with demonstrations: the icl baseline shows them all
        chosen = range(len(task.demos)) if x is None or prompt.mode == "none" else [int(i) for i in x if i >= 0]
        return {**out, "kind": "demos", "demonstrations": _demonstrations(task, list(chosen))}
    shape = {"n_tokens": prompt.n_tokens, "init": prompt.init, "dim": prompt.projection.dim}
    if prompt.mode == "deep":
        return {**out, "kind": "deep", **shape}
    nearest = None if neighbors is None else [[asdict(n) for n in row] for row in neighbors]
    if nearest is not None:
        shape["n_tokens"] = len(nearest)  # an init text's token count overrides n_tokens
    return {**out, "kind": "soft", **shape, "nearest_tokens": nearest}


def _scored(labels: list[int], scored: dict | None, n_labels: int) -> dict | None:
    if scored is None:
        return None
    return {"metric": scored["metric"], "confusion": confusion(labels, scored["predictions"], n_labels)}


def explain(
    task: TaskSpec,
    test: Examples,
    *,
    metric_name: str,
    prompt: dict,
    tuned: dict | None,
    manual: dict | None,
) -> dict:
    """A run's analysis. `prompt` is `describe_prompt`'s; `tuned`/`manual` are `nograd.pipeline.score` results
    with predictions on `test` (None without a test split: no matrices, no changed examples)."""
    n_labels = len(task.labels)
    both = tuned is not None and manual is not None
    return {
        "version": VERSION,
        "labels": list(task.labels),
        "metric_name": metric_name,
        "n_test": len(test),
        "prompt": prompt,
        "tuned": _scored(test.labels, tuned, n_labels),
        "manual": _scored(test.labels, manual, n_labels),
        "changed": changed_examples(test, task.labels, manual["predictions"], tuned["predictions"]) if both else None,
    }
