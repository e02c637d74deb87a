"""Turning a task's examples into token ids: a shared prefix (specials, instruction, prompt slots, ICL
demonstrations) and a per-example body that ends at the scored position.

Each example's text comes from `nograd.clients.render`, the renderer every endpoint uses, and is tokenized as one
string, as a server tokenizes the text it is sent (BPE merges across a boundary such as a demonstration separator
would differ if the pieces were tokenized apart). Soft prompts are the one exception: their slots are not text, so
the text before the slot and the text after it are tokenized each as one string. Under a chat template the
rendered text is the user message of `tokenizer.apply_chat_template`.

The prefix is the longest run of leading tokens all examples share (it always holds the prompt slots): a causal LM
encodes it once per candidate and every example attends to its keys and values (prefix reuse); the bodies are the
rest, so prefix + body is exactly each example's token sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nograd.clients.render import label_words, placed_prompt, render
from nograd.clients.types import Examples, PromptSpec, TaskSpec

from .errors import ContextLengthError, EngineError, VerbalizerError

PLACEHOLDER_START = 1000  # BBT's placeholder prompt tokens: vocabulary ids 1000, 1001, ...
#: Marks the soft prompt's slot inside a chat-templated text; a private-use character no real text holds.
SLOT = "\ue000"


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

    def sequences(self) -> list[list[int]]:
        """Each example's token ids up to and including the scored position (prompt slots as placeholder ids)."""
        prefix = self.prefix_ids.tolist()
        return [prefix + self.body_ids[e, : int(self.score_pos[e]) + 1].tolist() for e in range(self.n_examples)]


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer adds before and after a text (e.g. <s> ... </s>)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def text_ids(tokenizer, text: str) -> list[int]:
    """`text` as token ids, without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _batch_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    unique = sorted(set(texts))
    encoded = tokenizer([t for t in unique if t], add_special_tokens=False)["input_ids"] if any(unique) else []
    found = dict(zip([t for t in unique if t], encoded))
    return [found.get(t, []) for t in texts]


def label_token_ids(tokenizer, task: TaskSpec) -> list[int]:
    """First token of each label's string (`nograd.clients.render.label_words`); two labels sharing one is an error."""
    ids = []
    for label, word in zip(task.labels, label_words(task)):
        tokens = text_ids(tokenizer, word)
        if not tokens:
            raise VerbalizerError(f"label {label!r}: verbalizer word {word!r} encodes to no token; use a real word")
        ids.append(tokens[0])
    seen: dict[int, str] = {}
    for label, token in zip(task.labels, ids):
        if token in seen:
            piece = tokenizer.convert_ids_to_tokens(token)
            raise VerbalizerError(
                f"labels {seen[token]!r} and {label!r} share the first token {piece!r} under this model's tokenizer, "
                f"so the model cannot tell them apart; choose verbalizer words that start differently"
            )
        seen[token] = label
    return ids


def _chat(tokenizer, content: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError("chat_template is on but this model's tokenizer has no chat template; turn it off")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def _texts(
    tokenizer, kind: str, task: TaskSpec, examples: Examples, soft: bool, prompt_text: str
) -> list[tuple[str, str | None]]:
    """Per example: the text before the soft prompt's slot and the text after it (soft prompts), or the whole
    text and None."""
    mask_token = None
    if kind == "masked":
        mask_token = getattr(tokenizer, "mask_token", None) or ""
        if not mask_token:
            raise EngineError("this masked LM's tokenizer has no mask token")
        if task.chat:
            raise EngineError("chat templates apply to causal LMs only; turn chat_template off for a masked LM")
    texts2 = examples.texts2 or [None] * len(examples)
    out = []
    for text, text2 in zip(examples.texts, texts2):
        head, tail = render(task, text, text2, mask_token=mask_token)
        if not soft:
            head, tail = head + placed_prompt(task, prompt_text) + tail, None
        if task.chat:
            chat = _chat(tokenizer, head + (SLOT + tail if soft else ""))
            if soft:
                if chat.count(SLOT) != 1:
                    raise EngineError(
                        "this model's chat template does not keep the user message as it is; score "
                        "soft prompts without chat_template"
                    )
                head, tail = chat.split(SLOT)
            else:
                head = chat
        out.append((head, tail))
    return out


def build_layout(
    tokenizer, kind: str, task: TaskSpec, examples: Examples, prompt: PromptSpec, max_length: int, prompt_text: str = ""
) -> Layout:
    """Encode examples for a causal (`kind="causal"`) or masked LM; `prompt_text` is a discrete candidate's prompt
    (with `prompt.mode` none). Raises EngineError subclasses on bad input."""
    if len(examples) == 0:
        raise EngineError("examples is empty; send at least one example")
    if len(task.verbalizer) != len(task.labels):
        raise VerbalizerError(f"verbalizer has {len(task.verbalizer)} words for {len(task.labels)} labels")
    if any(label < 0 or label >= len(task.labels) for label in examples.labels):
        raise EngineError(f"examples.labels must be indices in [0, {len(task.labels)})")
    soft = prompt.mode != "none"
    if soft and prompt_text:
        raise EngineError("a discrete prompt text goes with prompt.mode 'none'")
    pieces = _texts(tokenizer, kind, task, examples, soft, prompt_text)
    words = label_token_ids(tokenizer, task)
    lead, trail = ([], []) if task.chat else _special_ids(tokenizer)
    if kind != "masked":
        trail = []

    p0_ids, slot_ids = None, []
    if prompt.mode != "none":
        if prompt.init:
            slot_ids = text_ids(tokenizer, prompt.init)
            p0_ids = torch.tensor(slot_ids) if prompt.mode == "cat" else None
        else:
            if prompt.n_tokens < 1:
                raise EngineError(f"prompt.n_tokens must be >= 1 (got {prompt.n_tokens})")
            slot_ids = list(range(PLACEHOLDER_START, PLACEHOLDER_START + prompt.n_tokens))
    befores = _batch_ids(tokenizer, [before for before, _ in pieces])
    afters = _batch_ids(tokenizer, [after or "" for _, after in pieces])
    slot_start = len(lead) + len(befores[0]) if soft else len(lead)
    sequences = [lead + before + slot_ids + after + trail for before, after in zip(befores, afters)]

    for i, ids in enumerate(sequences):
        if len(ids) > max_length:
            raise ContextLengthError(
                f"example {i} needs {len(ids)} tokens (incl. prompt and demonstrations) but the model's context is "
                f"{max_length}; shorten the text, use fewer demonstrations or fewer prompt tokens"
            )
    if kind == "masked":
        positions = []
        for i, ids in enumerate(sequences):
            found = [j for j, t in enumerate(ids) if t == tokenizer.mask_token_id]
            if len(found) != 1:
                raise EngineError(
                    f"example {i}: expected exactly one mask token, found {len(found)}; texts must "
                    "not contain the mask token"
                )
            positions.append(found[0])
        limit = min(positions)
    else:
        positions = [len(ids) - 1 for ids in sequences]
        limit = min(positions)
    shared = _common_prefix(sequences, limit)
    if shared < slot_start + len(slot_ids) or min(positions) < 0:
        raise EngineError("an example has nothing to score after the prompt (empty text and template)")

    bodies = [ids[shared:] for ids in sequences]
    width = max(len(b) for b in bodies)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    body_ids = torch.full((len(bodies), width), pad_id, dtype=torch.long)
    body_mask = torch.zeros((len(bodies), width), dtype=torch.bool)
    for i, body in enumerate(bodies):
        body_ids[i, : len(body)] = torch.tensor(body)
        body_mask[i, : len(body)] = True
    return Layout(
        prefix_ids=torch.tensor(sequences[0][:shared], dtype=torch.long),
        slots=torch.arange(slot_start, slot_start + len(slot_ids), dtype=torch.long),
        body_ids=body_ids,
        body_mask=body_mask,
        score_pos=torch.tensor([p - shared for p in positions]),
        label_ids=torch.tensor(words),
        labels=torch.tensor(examples.labels),
        p0_ids=p0_ids,
        mode=prompt.mode,
    )


def _common_prefix(sequences: list[list[int]], limit: int) -> int:
    """Length of the longest run of leading tokens every sequence shares, at most `limit`."""
    first = sequences[0]
    length = min(limit, *(len(s) for s in sequences))
    for ids in sequences[1:]:
        n = 0
        while n < length and ids[n] == first[n]:
            n += 1
        length = n
    return length
