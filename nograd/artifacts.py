"""The run directory (config.json, history.jsonl, result.json, analysis.json, prompt.safetensors) and the prompt
file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load, load_file, save

from nograd.clients.types import PromptSpec, TaskSpec

from .config import ResolvedConfig

FORMAT = "nograd-prompt/1"


def start_run_dir(out_dir: Path, config: ResolvedConfig) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    (out_dir / "history.jsonl").write_text("")


def append_history(out_dir: Path, entry: dict) -> None:
    with open(out_dir / "history.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def save_analysis(out_dir: Path, analysis: dict) -> None:
    """Write the run's analysis (`nograd.analysis.explain`) as `analysis.json`."""
    (out_dir / "analysis.json").write_text(json.dumps(analysis, indent=2, ensure_ascii=False))


def prompt_bytes(
    *,
    config: ResolvedConfig,
    spec: PromptSpec,
    x: np.ndarray | None,
    materialized: np.ndarray | None,
    task_spec: TaskSpec,
    virtual_tokens: np.ndarray | None = None,
    model_id: str,
    scoring: dict,
    text: str | None = None,
) -> bytes:
    """A safetensors file holding z (d,) for cat/add or (L, d) for deep, the materialized prompt, and as metadata
    the projection spec, the task template/verbalizer/demonstrations, the resolved run config and how it was
    scored (`scoring`: see `nograd.pipeline.scoring`). For cat/add prompts on a causal LM, `virtual_tokens` (V, H)
    are the input embeddings of every position up to the prompt's last (`ModelClient.virtual_tokens`). Discrete
    prompts: z is the choice row (-1: empty position; for `demos` mode, indices into the task's demonstrations)
    and `text` the prompt as the model reads it."""
    tensors = {"z": np.zeros(0) if x is None else np.asarray(x, dtype=np.float64)}
    if materialized is not None:
        tensors["prompt"] = np.ascontiguousarray(materialized, dtype=np.float32)
    if virtual_tokens is not None:
        tensors["virtual_tokens"] = np.ascontiguousarray(virtual_tokens, dtype=np.float32)
    metadata = {
        "format": FORMAT,
        "spec": json.dumps(spec.to_dict()),
        "task_spec": json.dumps(task_spec.to_dict()),
        "config": json.dumps(config.to_dict()),
        "model_id": model_id,
        "scoring": json.dumps(scoring),
        **({} if text is None else {"text": text}),
    }
    return save(tensors, metadata=metadata)


def load_prompt(path: str | Path) -> dict:
    """Returns {spec, task_spec, config, model_id, x, prompt, virtual_tokens, text, scoring}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist; pass RUN_DIR/prompt.safetensors")
    with safe_open(str(path), framework="numpy") as fh:
        metadata = fh.metadata() or {}
    return _decode(metadata, load_file(str(path)), str(path))


def read_prompt(data: bytes) -> dict:
    """`load_prompt` for the bytes of a prompt file."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        tensors = load(data)
    except Exception as exc:  # any corruption is the same user-facing problem
        raise ValueError(f"not a nograd prompt file: {exc}") from None
    return _decode(metadata, tensors, "the data")


def _decode(metadata: dict, tensors: dict, where: str) -> dict:
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{where} is not a nograd prompt file (format {metadata.get('format')!r})")
    z = tensors["z"]
    return {
        "spec": PromptSpec.from_dict(json.loads(metadata["spec"])),
        "task_spec": TaskSpec.from_dict(json.loads(metadata["task_spec"])),
        "config": ResolvedConfig.from_dict(json.loads(metadata["config"])),
        "model_id": metadata["model_id"],
        "x": None if z.size == 0 else z,
        "prompt": tensors.get("prompt"),
        "virtual_tokens": tensors.get("virtual_tokens"),
        "text": metadata.get("text"),
        "scoring": json.loads(metadata.get("scoring", "{}")),
    }
