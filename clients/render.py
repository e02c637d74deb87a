"""Discrete candidates as concrete prompts, and prompts as plain text for text-only endpoints.

A `text`-mode candidate is a prompt string; a `demos`-mode candidate is a row of indices into the task's
demonstration pool. Both become a `(TaskSpec, prompt text)` pair: the task with the chosen demonstrations and the
text to put at `{prompt}` (or before everything else, followed by a newline). The local engine tokenizes that pair;
remote APIs get `render` 's string. Pure Python.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from .types import EvalRequest, TaskSpec

DISCRETE_MODES = ("text", "demos")
_FIELD = re.compile(r"\{(text|text2|mask|prompt)\}")


class CandidateError(ValueError):
    """A discrete candidate is malformed; the message names the field and the fix."""


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
            raise CandidateError(f"z holds demonstration indices outside [-1, {len(pool)}): the task has "
                                 f"{len(pool)} demonstrations")
        return [(replace(request.task, demos=tuple(pool[int(i)] for i in row if i >= 0)), "") for row in rows]
    raise CandidateError(f"prompt.mode {mode!r} is not a discrete mode ({', '.join(DISCRETE_MODES)})")


def _fill(template: str, text: str, text2: str | None, mask: str, prompt: str) -> str:
    values = {"text": text, "text2": text2 or "", "mask": mask, "prompt": prompt}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def render(task: TaskSpec, prompt: str, text: str, text2: str | None = None) -> tuple[str, bool]:
    """The text a causal model continues to score `text`, and whether the label word follows a space.

    Demonstrations are the template filled with their label word, joined by `task.demo_separator`; the prompt goes
    at `{prompt}` or, when the template has none, first, followed by a newline (what the local engine does).
    """
    template = task.template
    if "{mask}" not in template or "{text}" not in template:
        raise CandidateError("template must contain {text} and {mask}")
    lead, rest = "", template
    if "{prompt}" in template:
        cut = template.index("{prompt}")
        lead, rest = _fill(template[:cut], "", None, "", "") + prompt, template[cut + len("{prompt}"):]
    elif prompt:
        lead = prompt + "\n"
    before_mask = rest.split("{mask}", 1)[0]
    space = before_mask.endswith(" ")
    demos = []
    for d_text, d_text2, label in task.demos:
        filled = _fill(rest, d_text, d_text2, "\0", "")
        demos.append(filled.replace(" \0", " " + task.verbalizer[label]).replace("\0", task.verbalizer[label]))
    head = task.demo_separator.join(demos) + task.demo_separator if demos else ""
    return lead + head + _fill(before_mask.rstrip(" "), text, text2, "", ""), space
