"""One labelled example, and a stable hash of a list of them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """A labelled input.

    Attributes:
        text: The input text.
        label: The gold label (a key of the task's verbalizer).
        text2: The second text for pair tasks, else None.
    """

    text: str
    label: str
    text2: str | None = None


def examples_hash(examples: Iterable[Example]) -> str:
    """Returns the sha256 hex digest of a canonical JSON encoding of ``examples``.

    The order of the examples matters; equal lists always give equal hashes.
    """
    rows = [{"label": e.label, "text": e.text, "text2": e.text2} for e in examples]
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
