"""argparse options built from the declarations they mirror: `RunConfig` fields (`nograd run`, `nograd submit`)
and service `Settings` fields (`nograd serve | runner | worker | keys`), so each flag's type, help and default are
written once, where the field is."""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import fields
from pathlib import Path

from nograd.config import RunConfig
from nograd.service.settings import Settings


def option_type(annotation) -> tuple[type, dict]:
    """argparse `type` and extra keywords for a RunConfig field's annotation."""
    kind = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: an unset option
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return str, {"choices": list(typing.get_args(kind))}
    if kind is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(kind) is dict or kind is dict:
        return json.loads, {}
    return kind, {}


def run_field(name: str) -> tuple[type, dict, str, object]:
    """(type, extra argparse keywords, description, default) of RunConfig field `name`."""
    hint = typing.get_type_hints(RunConfig, include_extras=True)[name]
    kind, extra = option_type(hint)
    info = typing.get_args(hint)[1] if typing.get_origin(hint) is typing.Annotated else None
    default = next(f.default for f in fields(RunConfig) if f.name == name)
    return kind, extra, "" if info is None else info.description or "", default


def setting_default(name: str) -> str:
    """Settings field `name`'s default as the help shows it (lists comma-separated, the home folder as ~)."""
    field = Settings.model_fields[name]
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, Path):
        home = str(Path.home())
        return "~" + str(value)[len(home) :] if str(value).startswith(home) else str(value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def add_setting(
    parser: argparse.ArgumentParser, name: str, help: str | None = None, unset: str | None = None, **kwargs
) -> None:
    """`--NAME` (underscores as dashes) for Settings field `name`. It stays None unless given, so `Settings`
    reads $NOGRAD_NAME and then its own default; the help (the field's description unless `help` is given) says
    both, the default in words where `unset` gives them. Extra keywords go to `add_argument` (type, choices)."""
    text = help if help is not None else Settings.model_fields[name].description
    if not text:
        raise ValueError(f"Settings.{name} has no description: pass help= for --{name.replace('_', '-')}")
    shown = f"{text} (default: ${'NOGRAD_' + name.upper()} or {unset or setting_default(name)})"
    parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=_escape(shown), **kwargs)


def _escape(text: str) -> str:
    """argparse %-formats help strings; a literal % must be doubled."""
    return text.replace("%", "%%")
