"""Turning a task's examples into token ids: a shared prefix (specials, instruction, prompt slots, ICL
demonstrations) and a per-example body that ends at the scored position.

Everything before the first text field is identical for all examples, so a causal LM can encode it once per
candidate and let every example attend to its keys and values (prefix reuse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from clients.types import Examples, PromptSpec, TaskSpec

from .errors import ContextLengthError, EngineError, VerbalizerError

_FIELD = re.compile(r"\{(text|text2|mask|prompt)\}")
PLACEHOLDER_START = 1000  # BBT's placeholder prompt tokens: vocabulary ids 1000, 1001, ...


@dataclass
class Layout:
    """Token ids of one (task, examples, prompt) combination.

    prefix_ids: (Lp,) shared prefix; `slots` (n,) are the prompt positions inside it.
    body_ids: (E, Lb) right-padded with `pad_id`; body_mask marks real tokens; score_pos (E,) is the body index
        whose output is scored (causal: the last real token; masked: the mask token).
    p0_ids: for `cat` with an init text, the ids whose embeddings form p0 (else None: p0 = 0).
    """

    prefix_ids: torch.Tensor
    slots: torch.Tensor
    body_ids: torch.Tensor
    body_mask: torch.Tensor
    score_pos: torch.Tensor
    label_ids: torch.Tensor
    labels: torch.Tensor
    p0_ids: torch.Tensor | None = None
    mode: str = "none"

    @property
    def n_examples(self) -> int:
        return int(self.body_ids.shape[0])


def _segments(template: str) -> list[str]:
    """Split a template into literal text and `{field}` markers (odd indices are field names).

    Templates follow str.format conventions: `{{` and `}}` in literal text stand for single braces.
    """
    parts = _FIELD.split(template)
    return [p.replace("{{", "{").replace("}}", "}") if i % 2 == 0 else p for i, p in enumerate(parts)]


def _fill(parts: list[str], text: str, text2: str | None, mask: str) -> str:
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(part)
        elif part == "text":
            out.append(text)
        elif part == "text2":
            out.append(text2 or "")
        elif part == "mask":
            out.append(mask)
    return "".join(out)


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer adds before and after a text (e.g. <s> ... </s>)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def text_ids(tokenizer, text: str) -> list[int]:
    """`text` as token ids, without special tokens (how prompts, demonstrations and bodies are encoded)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def label_token_ids(tokenizer, words: tuple[str, ...], labels: tuple[str, ...], space: bool) -> list[int]:
    """First token of each label word; two labels sharing one is an error."""
    ids = []
    for label, word in zip(labels, words):
        tokens = text_ids(tokenizer, (" " if space else "") + word)
        if not tokens:
            raise VerbalizerError(f"label {label!r}: verbalizer word {word!r} encodes to no token; use a real word")
        ids.append(tokens[0])
    seen: dict[int, str] = {}
    for label, token in zip(labels, ids):
        if token in seen:
            piece = tokenizer.convert_ids_to_tokens(token)
            raise VerbalizerError(
                f"labels {seen[token]!r} and {label!r} share the first token {piece!r} under this model's tokenizer, "
                f"so the model cannot tell them apart; choose verbalizer words that start differently")
        seen[token] = label
    return ids


def build_layout(tokenizer, kind: str, task: TaskSpec, examples: Examples, prompt: PromptSpec,
                 max_length: int) -> Layout:
    """Encode examples for a causal (`kind="causal"`) or masked LM. Raises EngineError subclasses on bad input."""
    if len(examples) == 0:
        raise EngineError("examples is empty; send at least one example")
    if len(task.verbalizer) != len(task.labels):
        raise VerbalizerError(f"verbalizer has {len(task.verbalizer)} words for {len(task.labels)} labels")
    parts = _segments(task.template)
    fields = parts[1::2]
    if "mask" not in fields or "text" not in fields:
        raise EngineError("template must contain {text} and {mask}")
    if "prompt" in fields and fields.index("prompt") > fields.index("text"):
        raise EngineError("{prompt} must come before {text} in the template (the prompt is a shared prefix)")
    lead, trail = _special_ids(tokenizer)
    if "prompt" in fields:
        cut = 2 * fields.index("prompt") + 1
        before, rest = "".join(parts[:cut]), parts[cut + 1:]
    else:
        before, rest = "", parts
    mask_at = rest.index("mask")
    if kind == "causal":
        context_parts = rest[:mask_at]
        context_parts[-1] = context_parts[-1].rstrip(" ")
        space = rest[mask_at - 1].endswith(" ")
    else:
        context_parts = rest
        space = rest[mask_at - 1].endswith(" ")
    words = label_token_ids(tokenizer, task.verbalizer, task.labels, space)

    # Prompt slots.
    p0_ids = None
    if prompt.mode == "none":
        slot_ids: list[int] = []
    elif prompt.init:
        slot_ids = text_ids(tokenizer, prompt.init)
        p0_ids = torch.tensor(slot_ids) if prompt.mode == "cat" else None
    else:
        if prompt.n_tokens < 1:
            raise EngineError(f"prompt.n_tokens must be >= 1 (got {prompt.n_tokens})")
        slot_ids = list(range(PLACEHOLDER_START, PLACEHOLDER_START + prompt.n_tokens))
    demo_ids: list[int] = []
    if task.demos:
        full_parts = list(rest)
        demo_texts = []
        for text, text2, label in task.demos:
            word = (" " if space and kind == "causal" else "") + task.verbalizer[label]
            filled = _fill(full_parts, text, text2, "\0")
            if kind == "causal":
                filled = filled.replace(" \0", "\0")
            demo_texts.append(filled.replace("\0", word))
        demo_ids = text_ids(tokenizer, task.demo_separator.join(demo_texts) + task.demo_separator)
    prefix = lead + text_ids(tokenizer, before)
    slots = list(range(len(prefix), len(prefix) + len(slot_ids)))
    prefix = prefix + slot_ids + demo_ids

    bodies, positions = [], []
    mask_token = getattr(tokenizer, "mask_token", None) or ""
    if kind == "masked" and not mask_token:
        raise EngineError("this masked LM's tokenizer has no mask token")
    texts2 = examples.texts2 or [None] * len(examples)
    for i, (text, text2) in enumerate(zip(examples.texts, texts2)):
        if kind == "causal":
            body = text_ids(tokenizer, _fill(context_parts, text, text2, ""))
            pos = len(body) - 1
        else:
            body = text_ids(tokenizer, _fill(context_parts, text, text2, mask_token)) + trail
            found = [j for j, t in enumerate(body) if t == tokenizer.mask_token_id]
            if len(found) != 1:
                raise EngineError(f"example {i}: expected exactly one mask token, found {len(found)}; "
                                  "texts must not contain the mask token")
            pos = found[0]
        if pos < 0:
            raise EngineError(f"example {i}: nothing to score (empty text and template)")
        total = len(prefix) + len(body)
        if total > max_length:
            raise ContextLengthError(
                f"example {i} needs {total} tokens (prefix {len(prefix)} incl. prompt and demonstrations, "
                f"example {len(body)}) but the model's context is {max_length}; shorten the text, use fewer "
                f"demonstrations or fewer prompt tokens")
        bodies.append(body)
        positions.append(pos)
    if any(label < 0 or label >= len(task.labels) for label in examples.labels):
        raise EngineError(f"examples.labels must be indices in [0, {len(task.labels)})")
    width = max(len(b) for b in bodies)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    body_ids = torch.full((len(bodies), width), pad_id, dtype=torch.long)
    body_mask = torch.zeros((len(bodies), width), dtype=torch.bool)
    for i, body in enumerate(bodies):
        body_ids[i, :len(body)] = torch.tensor(body)
        body_mask[i, :len(body)] = True
    return Layout(prefix_ids=torch.tensor(prefix, dtype=torch.long), slots=torch.tensor(slots, dtype=torch.long),
                  body_ids=body_ids, body_mask=body_mask, score_pos=torch.tensor(positions),
                  label_ids=torch.tensor(words), labels=torch.tensor(examples.labels), p0_ids=p0_ids,
                  mode=prompt.mode)
