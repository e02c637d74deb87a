"""Prompt templates: ``str.format`` strings with a fixed set of placeholders.

``{text}`` (and ``{text2}`` for pair tasks) take the input, ``{mask}`` marks where the label
word goes and ``{prompt}`` (optional) where a soft prompt is inserted. Literal braces are
written ``{{`` and ``}}``.
"""

from __future__ import annotations

import string

from nograd.tasks._errors import TemplateError

PLACEHOLDERS = ("prompt", "text", "text2", "mask")
FIELDS = (("text",), ("text", "text2"))


def placeholders(template: str) -> list[str]:
    """Returns the placeholder names of ``template`` in order of appearance.

    Raises:
        TemplateError: on unbalanced braces, format specs or conversions.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(
            f"template {template!r} has unbalanced braces ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise TemplateError(
                f"template {template!r}: placeholder {{{name}}} has a format "
                "spec or conversion; use plain placeholders like {text}"
            )
        names.append(name)
    return names


def validate_template(template: str, fields: tuple[str, ...] = ("text",)) -> None:
    """Checks that ``template`` fits a task with input ``fields``.

    Rules: ``{mask}`` and ``{text}`` exactly once; ``{text2}`` exactly once iff ``fields`` is
    ("text", "text2"); no other placeholders; ``{prompt}`` at most once and before every
    text field.

    Raises:
        TemplateError: naming the broken rule and how to fix it.
    """
    fields = tuple(fields)
    if fields not in FIELDS:
        raise TemplateError(f"fields must be one of {FIELDS}, got {fields}")
    if not isinstance(template, str):
        raise TemplateError(f"template must be a string, got {type(template).__name__}")
    names = placeholders(template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        raise TemplateError(
            f"template {template!r} has unknown placeholder(s) {shown}; "
            "allowed are {text}, {text2}, {mask} and {prompt}"
        )
    required = ("mask",) + fields
    for name in required:
        if names.count(name) != 1:
            raise TemplateError(
                f"template {template!r} must contain {{{name}}} exactly once (found {names.count(name)})"
            )
    if "text2" in names and "text2" not in fields:
        raise TemplateError(
            f"template {template!r} uses {{text2}} but the task has one text "
            "field; remove {text2} or give a second text field"
        )
    if names.count("prompt") > 1:
        raise TemplateError(f"template {template!r} has {{prompt}} more than once; keep one")
    if "prompt" in names:
        first_text = min(names.index(f) for f in fields)
        if names.index("prompt") > first_text:
            raise TemplateError(
                f"template {template!r}: {{prompt}} must come before the first text field; move it in front of {{text}}"
            )
