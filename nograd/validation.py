"""Validation of plain dataclasses by pydantic: each field's type and bounds are declared once, on the field
(`Annotated[int, Field(ge=1, description=...)]`), and read by everything that checks or documents an option (the
CLI's flags, the REST schema, run configs loaded from files). Errors name the field."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

T = TypeVar("T")


class FieldError(ValueError):
    """A value is invalid: `field` names it (dotted for nested settings), `message` says how to fix it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message = field, message


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass's field names, in order."""
    return tuple(cls.__dataclass_fields__)


def validate(cls: type[T], data: Mapping[str, Any], *, what: str, error: type[FieldError] = FieldError) -> T:
    """`cls(**data)` after pydantic checked every field's type and bounds; raises `error(field, message)`.
    `what` names one field in messages, e.g. "a run option"."""
    if not isinstance(data, Mapping):
        raise error("", f"must be an object of {what.split(' ', 1)[1]}s")
    try:
        return _adapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        detail = exc.errors()[0]
        loc = [str(p) for p in detail["loc"]]
        field = loc[0] if loc else ""
        if detail["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = f"is not {what}; use one of {', '.join(field_names(cls))}"
        elif detail["type"] == "missing":
            message = "is required"
        else:
            message = detail["msg"][0].lower() + detail["msg"][1:]
            if len(loc) > 1:
                message = f"{'.'.join(loc[1:])}: {message}"
        raise error(field, message) from None
