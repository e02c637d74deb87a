"""The queue's wire format: plain JSON with numpy arrays as base64 (no pickle: workers never unpickle queue data).

An evaluation travels in two parts. The *context* (task template, label words and the examples) is written once
per job and per example set and referenced by its content hash. The *work* of a batch carries only what varies:
the prompt spec (projection seed, scales, ...), the candidates' `z` vectors (and BBTv2's per-layer `base`), the
loss name. A batch id is the SHA-256 of context key + work, so a redelivered or resubmitted batch has the same id
and its result is written once.
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np

from nograd.clients.types import EvalRequest, EvalResult, Examples, InvalidRequest, PromptSpec, TaskSpec


def _array(value: np.ndarray | None) -> dict | None:
    if value is None:
        return None
    value = np.ascontiguousarray(value)
    return {"dtype": value.dtype.str, "shape": list(value.shape), "b64": base64.b64encode(value.tobytes()).decode()}


def _unarray(value: dict | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.get("dtype") not in ("<f8", "<f4", "<i8"):
        raise ValueError(f"array dtype {value.get('dtype')!r} is not allowed on the wire")
    data = base64.b64decode(value["b64"])
    return np.frombuffer(data, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def encode_context(task: TaskSpec, examples: Examples) -> bytes:
    return dumps(
        {
            "task": task.to_dict(),
            "examples": {
                "texts": list(examples.texts),
                "labels": [int(v) for v in examples.labels],
                "texts2": None if examples.texts2 is None else list(examples.texts2),
            },
        }
    )


def decode_context(data: bytes) -> tuple[TaskSpec, Examples]:
    """A job context's task and examples; raises InvalidRequest for a malformed one."""
    try:
        obj = json.loads(data)
        ex = obj["examples"]
        return TaskSpec.from_dict(obj["task"]), Examples(texts=ex["texts"], labels=ex["labels"], texts2=ex["texts2"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed job context ({type(exc).__name__}: {exc})") from None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def encode_work(request: EvalRequest) -> dict:
    """The per-batch part of `request` (JSON-able)."""
    return {
        "prompt": request.prompt.to_dict(),
        "z": _array(None if request.z is None else np.asarray(request.z, np.float64)),
        "layer": request.layer,
        "base": _array(None if request.base is None else np.asarray(request.base, np.float64)),
        "loss": request.loss,
        **({} if request.texts is None else {"texts": [str(t) for t in request.texts]}),
    }


def decode_work(work: dict, task: TaskSpec, examples: Examples) -> EvalRequest:
    """The request a batch's work stands for; raises InvalidRequest for a malformed one (retrying cannot help)."""
    try:
        return EvalRequest(
            task=task,
            examples=examples,
            prompt=PromptSpec.from_dict(work["prompt"]),
            z=_unarray(work["z"]),
            layer=work["layer"],
            base=_unarray(work["base"]),
            loss=work["loss"],
            texts=work.get("texts"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed batch ({type(exc).__name__}: {exc})") from None


def batch_id(context_key: str, work: dict) -> str:
    return digest(context_key.encode() + b"|" + dumps(work))


def encode_result(result: EvalResult) -> dict:
    return {
        "loss": _array(np.asarray(result.loss, np.float64)),
        "metric": _array(np.asarray(result.metric, np.float64)),
        "losses": {k: _array(np.asarray(v, np.float64)) for k, v in result.losses.items()},
        "logits": _array(np.asarray(result.logits, np.float64)),
        "model_id": result.model_id,
        "seconds": float(result.seconds),
        "scales": None if result.scales is None else [float(s) for s in result.scales],
        **({} if result.usage is None else {"usage": {k: int(v) for k, v in result.usage.items()}}),
    }


def decode_result(data: dict) -> EvalResult:
    return EvalResult(
        loss=_unarray(data["loss"]),
        metric=_unarray(data["metric"]),
        losses={k: _unarray(v) for k, v in data["losses"].items()},
        logits=_unarray(data["logits"]),
        model_id=data["model_id"],
        seconds=data["seconds"],
        scales=None if data["scales"] is None else tuple(data["scales"]),
        usage=data.get("usage"),
    )


def merge_results(parts: list[EvalResult]) -> EvalResult:
    """Concatenate the per-chunk results of one population (candidates in order)."""
    if len(parts) == 1:
        return parts[0]
    cat = np.concatenate
    return EvalResult(
        loss=cat([p.loss for p in parts]),
        metric=cat([p.metric for p in parts]),
        losses={k: cat([p.losses[k] for p in parts]) for k in parts[0].losses},
        logits=cat([p.logits for p in parts]),
        model_id=parts[0].model_id,
        seconds=max(p.seconds for p in parts),
        scales=parts[0].scales,
        usage=merge_usage([p.usage for p in parts]),
    )


def merge_usage(parts: list[dict | None]) -> dict | None:
    """Sum per-part usage counters (None when no part reports any)."""
    present = [p for p in parts if p]
    if not present:
        return None
    total: dict[str, int] = {}
    for part in present:
        for key, value in part.items():
            total[key] = total.get(key, 0) + int(value)
    return total
