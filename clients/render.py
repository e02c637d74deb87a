"""The one renderer: how a template, a candidate and an example become the text a model reads.

Every endpoint renders through this module (the local engine, the queue's workers, OpenAI-compatible servers, vLLM,
RLPrompt's rewards), so the same job scores the same string everywhere:

- Templates follow `str.format` conventions: `{text}`, `{text2}`, `{mask}`, `{prompt}` are fields and `{{`/`}}`
  stand for literal braces.
- Text = head + prompt + tail. The head is the template's text before `{prompt}` (empty without that field). The
  prompt is a soft prompt's slots (engines), or a discrete prompt's text: at `{prompt}`, or first and followed by
  a newline when the template has no `{prompt}`. The tail is the demonstrations, each the template after
  `{prompt}` filled with its text and label word and followed by `demo_separator`, then the example: for causal
  scoring the template up to `{mask}`, spaces before `{mask}` removed; for masked LMs the whole template with the
  mask token at `{mask}`.
- The label word follows the text. It carries a leading space when the template has one before `{mask}`, except
  under a chat template, where it starts the assistant's answer.

A discrete candidate is a prompt string (`text` mode) or a row of demonstration indices (`demos` mode); `candidates`
turns each into a `(TaskSpec with its demonstrations, prompt text)` pair. Pure Python.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

import numpy as np

from .types import DISCRETE_MODES, EvalRequest, InvalidRequest, TaskSpec

_FIELD = re.compile(r"\{(text|text2|mask|prompt)\}")


class CandidateError(InvalidRequest):
    """A discrete candidate is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class Template:
    """A parsed template: the literal text before `{prompt}` and the segments after it (literal text at even
    indices, field names at odd ones), literal braces already un-escaped."""

    head: str
    rest: tuple[str, ...]
    has_prompt: bool

    @classmethod
    @functools.lru_cache(maxsize=256)
    def parse(cls, template: str) -> Template:
        parts = _FIELD.split(template)
        parts = [p.replace("{{", "{").replace("}}", "}") if i % 2 == 0 else p for i, p in enumerate(parts)]
        fields = parts[1::2]
        if "mask" not in fields or "text" not in fields:
            raise InvalidRequest("template must contain {text} and {mask}")
        if "prompt" not in fields:
            return cls(head="", rest=tuple(parts), has_prompt=False)
        if fields.index("prompt") > fields.index("text"):
            raise InvalidRequest("{prompt} must come before {text} in the template (the prompt is a shared prefix)")
        cut = 2 * fields.index("prompt") + 1
        return cls(head="".join(parts[:cut]), rest=tuple(parts[cut + 1 :]), has_prompt=True)

    @property
    def _mask_at(self) -> int:
        return 1 + 2 * self.rest[1::2].index("mask")

    @property
    def space_before_mask(self) -> bool:
        """Whether the template's text right before `{mask}` ends with a space."""
        return self.rest[self._mask_at - 1].endswith(" ")

    def fill(self, text: str, text2: str | None, mask: str) -> str:
        """Everything after `{prompt}`, fields filled."""
        return _join(self.rest, text, text2, mask)

    def context(self, text: str, text2: str | None) -> str:
        """Everything after `{prompt}` up to `{mask}`, spaces right before `{mask}` removed (causal scoring)."""
        upto = list(self.rest[: self._mask_at])
        upto[-1] = upto[-1].rstrip(" ")
        return _join(upto, text, text2, "")


def _join(segments, text: str, text2: str | None, mask: str) -> str:
    values = {"text": text, "text2": text2 or "", "mask": mask}
    return "".join(part if i % 2 == 0 else values[part] for i, part in enumerate(segments))


def placed_prompt(task: TaskSpec, prompt: str) -> str:
    """A discrete prompt's text as it sits in the text: at `{prompt}`, or first followed by a newline."""
    if not prompt:
        return ""
    return prompt if Template.parse(task.template).has_prompt else prompt + "\n"


def render(task: TaskSpec, text: str, text2: str | None = None, *, mask_token: str | None = None) -> tuple[str, str]:
    """(head, tail) of one example (see the module docstring); `mask_token`: render for a masked LM."""
    template = Template.parse(task.template)
    demos = [template.fill(d_text, d_text2, task.verbalizer[label]) for d_text, d_text2, label in task.demos]
    lead = task.demo_separator.join(demos) + task.demo_separator if demos else ""
    example = template.context(text, text2) if mask_token is None else template.fill(text, text2, mask_token)
    return template.head, lead + example


def full_text(task: TaskSpec, text: str, text2: str | None = None, *, prompt: str = "") -> str:
    """The text a causal model continues to score one example under a discrete prompt (or none)."""
    head, tail = render(task, text, text2)
    return head + placed_prompt(task, prompt) + tail


def label_words(task: TaskSpec) -> tuple[str, ...]:
    """The strings that follow the text, one per label: each label is scored by its string's first token."""
    space = Template.parse(task.template).space_before_mask and not task.chat
    return tuple((" " if space else "") + word for word in task.verbalizer)


def candidates(request: EvalRequest) -> list[tuple[TaskSpec, str]]:
    """One `(task with its demonstrations, prompt text)` per candidate of a discrete-mode request."""
    mode = request.prompt.mode
    if mode == "text":
        if request.texts is None or request.z is not None:
            raise CandidateError("prompt.mode 'text' needs `texts` (one prompt string per candidate) and no z")
        out = []
        for i, text in enumerate(request.texts):
            if not isinstance(text, str):
                raise CandidateError(f"texts[{i}] must be a string")
            if _FIELD.search(text):
                raise CandidateError(f"texts[{i}] contains a template field ({{text}}, {{mask}}, ...); remove it")
            out.append((replace(request.task, demos=()), text))
        return out
    if mode == "demos":
        if request.texts is not None:
            raise CandidateError("prompt.mode 'demos' takes demonstration indices in z, not texts")
        pool = request.task.demos
        if request.z is None:
            return [(request.task, "")]
        rows = np.asarray(request.z)
        if rows.ndim != 2 or not np.all(np.isfinite(rows)) or np.any(rows != np.round(rows)):
            raise CandidateError("z must be a (candidates, k) array of whole demonstration indices for 'demos'")
        if rows.size and (rows.min() < -1 or rows.max() >= len(pool)):
            raise CandidateError(
                f"z holds demonstration indices outside [-1, {len(pool)}): the task has {len(pool)} demonstrations"
            )
        return [(replace(request.task, demos=tuple(pool[int(i)] for i in row if i >= 0)), "") for row in rows]
    raise CandidateError(f"prompt.mode {mode!r} is not a discrete mode ({', '.join(DISCRETE_MODES)})")
