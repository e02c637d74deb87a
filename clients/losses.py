"""Losses and metrics on label-word logits, per candidate (numpy; logits (P, E, K), labels (E,)), and the one
place an `EvalResult` is built from logits."""

from __future__ import annotations

import time

import numpy as np

from .types import LOSSES, EvalRequest, EvalResult, InvalidRequest

HINGE_MARGIN = 2.0


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean over examples of -log softmax over the label words, per candidate."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[None, :, None], axis=-1)[..., 0]
    return -picked.mean(axis=-1)


def hinge(logits: np.ndarray, labels: np.ndarray, margin: float = HINGE_MARGIN) -> np.ndarray:
    """Mean over examples of sum_{j != y} max(0, s_j - s_y + margin), per candidate (BBT's hinge loss)."""
    gold = np.take_along_axis(logits, labels[None, :, None], axis=-1)
    violations = np.maximum(0.0, logits - gold + margin)
    violations[..., :] *= 1 - np.eye(logits.shape[-1])[labels][None]
    return violations.sum(axis=-1).mean(axis=-1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (predictions == labels[None]).mean(axis=-1)


def macro_f1(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-averaged F1 over the classes present in `labels` or predicted, per candidate."""
    scores = np.zeros(predictions.shape[0])
    for p, pred in enumerate(predictions):
        f1s = []
        for c in range(n_classes):
            tp = np.sum((pred == c) & (labels == c))
            fp = np.sum((pred == c) & (labels != c))
            fn = np.sum((pred != c) & (labels == c))
            if tp + fp + fn == 0:
                continue
            f1s.append(2 * tp / (2 * tp + fp + fn))
        scores[p] = float(np.mean(f1s)) if f1s else 0.0
    return scores


def metric(logits: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    predictions = logits.argmax(axis=-1)
    if name == "accuracy":
        return accuracy(predictions, labels)
    if name == "macro_f1":
        return macro_f1(predictions, labels, logits.shape[-1])
    raise InvalidRequest(f"metric {name!r} is unknown; use accuracy or macro_f1")


def all_losses(logits: np.ndarray, labels: np.ndarray, metric_name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All loss kinds and the metric, each (P,)."""
    score = metric(logits, labels, metric_name)
    return {"ce": cross_entropy(logits, labels), "hinge": hinge(logits, labels), "perf": -score}, score


def score_logits(
    request: EvalRequest,
    logits: np.ndarray,
    *,
    model_id: str,
    started: float,
    scales: tuple[float, ...] | None = None,
    usage: dict[str, int] | None = None,
) -> EvalResult:
    """The `EvalResult` of `request` from its (P, E, K) label-word logits: every loss, the metric, the request's
    loss; `started` is the `time.perf_counter()` reading when the evaluation began."""
    if request.loss not in LOSSES:
        raise InvalidRequest(f"loss {request.loss!r} is unknown; use one of {', '.join(LOSSES)}")
    logits = np.asarray(logits, dtype=np.float64)
    losses, score = all_losses(logits, np.asarray(request.examples.labels), request.task.metric)
    return EvalResult(
        loss=losses[request.loss],
        metric=score,
        losses=losses,
        logits=logits,
        model_id=model_id,
        seconds=time.perf_counter() - started,
        scales=scales,
        usage=usage,
    )
