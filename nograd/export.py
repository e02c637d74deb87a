"""Exports of a tuned prompt into formats the ecosystem loads (`nograd export`, `GET /v1/jobs/{id}/export`).

Every export is built from the bytes of a prompt file (`nograd.artifacts`) alone, so the CLI and the service give
the same files and need no model:
- `native`: the prompt file itself (z, the materialized prompt, the virtual tokens, the task and the scoring).
- `peft`: for BBT (`cat` and `add` soft prompts on a causal LM) a Hugging Face PEFT prompt-tuning adapter.
  PEFT puts its virtual tokens before the whole input, while nograd's prompt may sit after special tokens and the
  template's text before `{prompt}`. Those positions are folded into the adapter: its `prompt_embeddings` are the
  input embeddings of every position up to the prompt's last (`virtual_tokens`, built by the model's owner at save
  time), and `nograd_template.json` gives the text that follows them, which a user tokenizes without special
  tokens. The model then reads exactly the inputs nograd scored.
- `text`: the prompt rendered into the template as one `str.format` template with `{text}` (and `{text2}`) left to
  fill: a discrete prompt's text at its place, or the chosen demonstrations written out. It ends where the label
  word is predicted (causal scoring).
- `chat`: the same text as the user message of a chat request, with the label words the answer starts with.

`prompt_embeds` builds vLLM `prompt_embeds` for new inputs from a `peft` or `native` export (torch, lazily).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from nograd.clients.render import candidates, full_text, label_words, render
from nograd.clients.types import EvalRequest, Examples, PromptSpec, TaskSpec

from .artifacts import read_prompt

FORMATS = ("native", "peft", "text", "chat")
#: Marks where an example's text goes while rendering; private-use characters no template holds.
_TEXT, _TEXT2 = "\ue001", "\ue002"


class ExportError(ValueError):
    """A prompt cannot be exported in the format asked for; `field` is the request field to change."""

    def __init__(self, message: str, field: str = "format"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Rendered:
    """A discrete prompt in the template: `template` is a `str.format` template with `fields` left to fill."""

    template: str
    fields: tuple[str, ...]
    task: TaskSpec
    prompt_text: str


def export_files(data: bytes, fmt: str) -> dict[str, bytes]:
    """The files of export `fmt` (one of FORMATS) of the prompt file `data`, by name. Raises ExportError when the
    prompt has no such export, ValueError when `data` is not a prompt file."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if fmt == "native":
        read_prompt(data)  # refuse what is not a prompt file
        return {"prompt.safetensors": data}
    prompt = read_prompt(data)
    if fmt == "peft":
        return _peft(prompt)
    rendered = render_prompt(prompt)
    about = _about(prompt, rendered)
    if fmt == "text":
        body = {"format": "nograd-text/1", "template": rendered.template, "fields": list(rendered.fields), **about}
        return {"prompt.txt": rendered.template.encode(), "prompt.json": _json(body)}
    messages = [{"role": "user", "content": rendered.template}]
    note = (
        "nograd scored the first token of the assistant's answer under the model's chat template"
        if rendered.task.chat
        else "nograd scored this text as a completion (no chat template); under a chat template scores can differ"
    )
    body = {"format": "nograd-chat/1", "messages": messages, "fields": list(rendered.fields), **about, "note": note}
    return {"messages.json": _json(body)}


def ready_to_use(data: bytes) -> dict[str, bytes]:
    """The export a user of the prompt wants by default, its files named `FORMAT/NAME`: `text` and `chat` for a
    discrete prompt, `peft` for a BBT one; {} when neither applies (BBTv2, a prompt file without virtual tokens)."""
    for formats in (("text", "chat"), ("peft",)):
        try:
            return {f"{fmt}/{name}": content for fmt in formats for name, content in export_files(data, fmt).items()}
        except ExportError:
            continue
    return {}


def write_export(files: dict[str, bytes], out_dir: Path, force: bool = False) -> list[Path]:
    """Write `files` into `out_dir` (created); refuses to overwrite an existing file unless `force`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in files]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ExportError(f"{', '.join(existing)} already exist; pass --force to overwrite", field="out")
    for path, content in zip(paths, files.values()):
        path.write_bytes(content)
    return paths


def render_prompt(prompt: dict) -> Rendered:
    """The discrete prompt (manual, ICL, a searched text or demonstration choice) of a loaded prompt file
    (`nograd.artifacts.load_prompt`) rendered into its template."""
    spec: PromptSpec = prompt["spec"]
    task: TaskSpec = prompt["task_spec"]
    if spec.mode in ("cat", "add", "deep"):
        alternative = "peft or native" if spec.mode != "deep" else "native"
        raise ExportError(
            f"a soft prompt (mode {spec.mode}) has no text form; export it as {alternative} "
            "(`nograd export --format peft` loads it in PEFT and vLLM)"
        )
    x = prompt["x"]
    request = EvalRequest(
        task=task,
        examples=Examples(texts=[_TEXT], labels=[0]),
        prompt=spec,
        z=None if spec.mode != "demos" or x is None else np.asarray(x, dtype=np.float64).reshape(1, -1),
        texts=[prompt["text"] or ""] if spec.mode == "text" else None,
    )
    shown, text = candidates(request)[0] if spec.mode in ("text", "demos") else (task, "")
    fields = _fields(task)
    template = _as_format(full_text(shown, _TEXT, _TEXT2 if "text2" in fields else None, prompt=text))
    return Rendered(template=template, fields=fields, task=shown, prompt_text=text)


def _about(prompt: dict, rendered: Rendered) -> dict:
    task = rendered.task
    return {
        "label_words": dict(zip(task.labels, label_words(task))),
        "answer": "the label whose word's first token the model finds most likely right after the text",
        "chat": task.chat,
        "prompt_text": rendered.prompt_text or None,
        "demonstrations": [
            {"text": t, **({"text2": t2} if t2 is not None else {}), "label": task.labels[y]} for t, t2, y in task.demos
        ],
        "method": prompt["config"].method,
        "model_id": prompt["model_id"],
    }


def _peft(prompt: dict) -> dict[str, bytes]:
    spec: PromptSpec = prompt["spec"]
    task: TaskSpec = prompt["task_spec"]
    if spec.mode == "deep":
        raise ExportError(
            "BBTv2's deep prompts are added to every layer's hidden states; PEFT has no such adapter type (prefix "
            "tuning replaces attention keys and values, prompt tuning only the input). Export format native: "
            "its `prompt` tensor is (layers, tokens, hidden)"
        )
    if spec.mode not in ("cat", "add"):
        raise ExportError("a discrete prompt is text, not an adapter: export format text or chat")
    if task.chat:
        raise ExportError(
            "this prompt was tuned inside a chat template's user turn; a PEFT prompt-tuning adapter puts its tokens "
            "before the whole input. Export format native (or re-run without chat_template)"
        )
    virtual = prompt["virtual_tokens"]
    if virtual is None:
        raise ExportError(
            "this prompt file has no virtual tokens: it was written by an older release, on a masked LM or by an "
            "endpoint without the model's embeddings; re-run the job, or export format native"
        )
    virtual = np.ascontiguousarray(virtual, dtype=np.float32)
    n_prompt = 0 if prompt["prompt"] is None else int(np.asarray(prompt["prompt"]).shape[0])
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(virtual.shape[0]),
        "token_dim": int(virtual.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": None,  # PEFT fills these from the base model's config
        "num_layers": None,
        "prompt_tuning_init": "RANDOM",  # the weights below replace the initialization
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "base_model_name_or_path": prompt["config"].model,
        "revision": None,
        "inference_mode": True,
        "modules_to_save": None,
        "auto_mapping": None,
    }
    fields = _fields(task)
    head, tail = render(task, _TEXT, _TEXT2 if "text2" in fields else None)
    template = _as_format(tail)
    scoring = prompt["scoring"]
    about = {
        "format": "nograd-peft/1",
        "input_template": template,
        "fields": list(fields),
        "add_special_tokens": False,
        "label_words": dict(zip(task.labels, label_words(task))),
        "answer": "the label whose word's first token has the highest logit at the last input position",
        "virtual_tokens": {
            "total": int(virtual.shape[0]),
            "prompt": n_prompt,
            "folded": int(virtual.shape[0]) - n_prompt,
            "folded_text": head,
            "why": "special tokens and the template's text before the prompt, folded in so that PEFT, which puts "
            "its virtual tokens first, shows the model exactly the inputs nograd scored",
        },
        "usage": "tokenize input_template.format(text=...) with add_special_tokens=False and pass the ids to "
        "peft.PeftModel.from_pretrained(base_model, this_folder)",
        "method": prompt["config"].method,
        "mode": spec.mode,
        "model_id": prompt["model_id"],
        "dtype": scoring.get("dtype"),
    }
    return {
        "adapter_config.json": _json(config),
        "adapter_model.safetensors": save({"prompt_embeddings": virtual}),
        "nograd_template.json": _json(about),
    }


def prompt_embeds(export, texts: list[str], *, model, tokenizer, texts2: list[str] | None = None) -> list:
    """vLLM `prompt_embeds` for new inputs: per text, the (T, H) input embeddings the tuned soft prompt gives the
    model (virtual tokens, then the embeddings of the rest of the text), in the embedding layer's dtype.

    Args:
        export: a `peft` export folder, a native prompt file (path), or its bytes.
        texts, texts2: the inputs (texts2 for pair tasks).
        model: the served model (Hugging Face, same weights) or its input embedding module.
        tokenizer: its tokenizer.

    Example (vLLM >= 0.10 with `enable_prompt_embeds=True`)::

        embeds = prompt_embeds("export/", ["a gripping film"], model=hf_model, tokenizer=tok)
        llm.generate([{"prompt_embeds": e} for e in embeds], SamplingParams(max_tokens=1, logprobs=20))
    """
    import torch

    virtual, template, fields = _embeds_source(export)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model
    weight = embedding.weight
    if texts2 is not None and len(texts2) != len(texts):
        raise ValueError(f"texts2 has {len(texts2)} items for {len(texts)} texts")
    out = []
    with torch.inference_mode():
        head = torch.from_numpy(virtual).to(weight.device, weight.dtype)
        for i, text in enumerate(texts):
            values = {"text": text, **({"text2": texts2[i] if texts2 else ""} if "text2" in fields else {})}
            ids = tokenizer(template.format(**values), add_special_tokens=False)["input_ids"]
            body = embedding(torch.tensor(ids, device=weight.device, dtype=torch.long))
            out.append(torch.cat([head, body.to(head.dtype)]))
    return out


def _embeds_source(export) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """(virtual tokens, input template, fields) of a peft export folder or a native prompt file/bytes."""
    if isinstance(export, (str, Path)) and Path(export).is_dir():
        from safetensors.numpy import load_file

        folder = Path(export)
        about = json.loads((folder / "nograd_template.json").read_text())
        virtual = load_file(str(folder / "adapter_model.safetensors"))["prompt_embeddings"]
        return virtual, about["input_template"], tuple(about["fields"])
    prompt = read_prompt(export if isinstance(export, bytes) else Path(export).read_bytes())
    about = json.loads(_peft(prompt)["nograd_template.json"])
    return prompt["virtual_tokens"], about["input_template"], tuple(about["fields"])


def _fields(task: TaskSpec) -> tuple[str, ...]:
    """The example fields a rendered template leaves to fill."""
    return ("text", "text2") if "{text2}" in task.template else ("text",)


def _as_format(rendered: str) -> str:
    """Text rendered with the `_TEXT`/`_TEXT2` markers as a `str.format` template: braces escaped, markers as
    `{text}`/`{text2}`."""
    return rendered.replace("{", "{{").replace("}", "}}").replace(_TEXT, "{text}").replace(_TEXT2, "{text2}")


def _json(body: dict) -> bytes:
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()


__all__ = [
    "FORMATS",
    "ExportError",
    "Rendered",
    "export_files",
    "prompt_embeds",
    "ready_to_use",
    "render_prompt",
    "write_export",
]
