"""The queue's wire format: plain JSON with numpy arrays as base64 (no pickle: workers never unpickle queue data).

An evaluation travels in two parts. The *context* (task template, label words and the examples) is written once
per job and per example set and referenced by its content hash. The *work* of a batch carries only what varies:
the prompt spec (projection seed, scales, ...), the candidates' `z` vectors (and BBTv2's per-layer `base`), the
loss name. A batch id is the SHA-256 of context key + work, so a redelivered or resubmitted batch has the same id
and its result is written once.

An *inspection* is a batch whose work names a kind (`inspect`: `materialize`, `nearest_tokens` or `virtual_tokens`)
instead of candidates: the worker answers with its engine's prompt tensor, nearest vocabulary tokens or virtual-token
embeddings (`nograd.clients.protocol.ModelClient.virtual_tokens`) for one prompt. It needs no examples (its context
key is empty); `virtual_tokens` carries the task spec in the work itself. A prompt tensor larger than
`MAX_PROMPT_BYTES` is not sent: the worker answers with a refusal that says why (the prompt file then keeps z and
the spec, from which the tensor is rebuilt).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from nograd.clients.types import (
    EvalRequest,
    EvalResult,
    Examples,
    InvalidRequest,
    PromptSpec,
    TaskSpec,
    TokenNeighbor,
)

INSPECT_KINDS = ("materialize", "nearest_tokens", "virtual_tokens")
#: Inspection batches need no task data: their context key is empty.
INSPECT_CONTEXT = ""
#: The largest prompt tensor (float32 bytes) a worker sends back: every cat/add prompt and the deep (BBTv2) prompts
#: of models up to about 7B (32 layers x 50 tokens x 4096 = 26 MB) fit; a larger one would sit in the broker and in
#: the job store as a base64 blob of tens of MB, for a tensor the prompt file's z and spec rebuild exactly.
MAX_PROMPT_BYTES = 32 * 2**20


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


@dataclass(frozen=True)
class Inspection:
    """What an inspection batch asks about: prompt `spec`/`x` (z, or deep's (L, d) base), `k` for
    `nearest_tokens`, the task for `virtual_tokens`."""

    kind: str
    spec: PromptSpec
    x: np.ndarray | None
    k: int | None = None
    task: TaskSpec | None = None


def encode_inspect(
    kind: str, spec: PromptSpec, x: np.ndarray | None, k: int | None = None, task: TaskSpec | None = None
) -> dict:
    """The work of an inspection (see `Inspection`)."""
    if kind not in INSPECT_KINDS:
        raise ValueError(f"inspection kind {kind!r} is not one of {', '.join(INSPECT_KINDS)}")
    if (kind == "virtual_tokens") != (task is not None):
        raise ValueError("a virtual_tokens inspection, and only it, carries the task")
    return {
        "inspect": kind,
        "prompt": spec.to_dict(),
        "x": _array(None if x is None else np.asarray(x, np.float64)),
        **({"k": int(k)} if kind == "nearest_tokens" else {}),
        **({"task": task.to_dict()} if task is not None else {}),
    }


def inspect_kind(work: dict) -> str | None:
    """The inspection a batch's work asks for, or None for an evaluation."""
    return work.get("inspect")


def decode_inspect(work: dict) -> Inspection:
    """The inspection a batch's work asks for; raises InvalidRequest for a malformed one (retrying cannot help)."""
    try:
        kind = work["inspect"]
        if kind not in INSPECT_KINDS:
            raise ValueError(f"unknown inspection {kind!r} (known: {', '.join(INSPECT_KINDS)})")
        k = work.get("k")
        if kind == "nearest_tokens" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"k must be an integer >= 1 (got {k!r})")
        task = TaskSpec.from_dict(work["task"]) if kind == "virtual_tokens" else None
        return Inspection(kind, PromptSpec.from_dict(work["prompt"]), _unarray(work["x"]), k, task)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed inspection ({type(exc).__name__}: {exc})") from None


def encode_materialized(tensor: np.ndarray | None, limit: int = MAX_PROMPT_BYTES) -> dict:
    """A materialized prompt as float32 (`tensor`; None: the engine has none), or `refused` with the reason when
    it is larger than `limit` bytes."""
    if tensor is None:
        return {"tensor": None}
    tensor = np.asarray(tensor, np.float32)
    if tensor.nbytes > limit:
        shape = " x ".join(map(str, tensor.shape))
        return {
            "tensor": None,
            "refused": f"the materialized prompt ({shape} float32, {tensor.nbytes / 2**20:.1f} MiB) is larger than "
            f"the {limit / 2**20:g} MiB a queue result carries; the prompt file keeps z and the projection spec, "
            "from which the same tensor is rebuilt on the model",
        }
    return {"tensor": _array(tensor)}


def decode_materialized(data: dict) -> tuple[np.ndarray | None, str | None]:
    """(tensor or None, the worker's reason for not sending it or None)."""
    return _unarray(data["tensor"]), data.get("refused")


def encode_neighbors(rows: list[list[TokenNeighbor]] | None) -> dict:
    """Nearest tokens per prompt position as [id, token, similarity] triples (None: the engine cannot tell)."""
    if rows is None:
        return {"neighbors": None}
    return {"neighbors": [[[int(n.id), str(n.token), float(n.similarity)] for n in row] for row in rows]}


def decode_neighbors(data: dict) -> list[list[TokenNeighbor]] | None:
    rows = data["neighbors"]
    if rows is None:
        return None
    return [[TokenNeighbor(id=i, token=t, similarity=s) for i, t, s in row] for row in rows]
