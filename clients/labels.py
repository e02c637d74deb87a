"""Label-word scores from a remote endpoint's first-token top log-probabilities: which returned token stands for a
label word, and the floor for a word the list does not contain (see `nograd.clients.openai` for the whole procedure)."""

from __future__ import annotations

from .endpoint import RemoteError


def match_label(top: dict[str, float], word: str, exact_only: bool = False) -> float | None:
    """A label word's log-probability in one position's top list (token text -> logprob), or None when absent
    (the matching rules are in the module docstring; `exact_only`: the first rule only)."""
    stripped = [(t.strip(), lp) for t, lp in top.items()]
    exact = [lp for t, lp in stripped if t and t == word.strip()]
    if exact_only:
        return max(exact) if exact else None
    target = word.strip().lower()
    exact = exact or [lp for t, lp in stripped if t and t.lower() == target]
    if exact:
        return max(exact)
    need = min(3, len(target))
    prefix = [(len(t), lp) for t, lp in stripped if len(t) >= need and target.startswith(t.lower())]
    return max(prefix)[1] if prefix else None


def label_scores(top: dict[str, float], words: tuple[str, ...], floor_margin: float) -> tuple[list[float], int]:
    """Label-word log-probabilities from one position's top log-probabilities (token text -> logprob), and how
    many words fell to the floor (see the module docstring)."""
    return with_floor(top, [match_label(top, word) for word in words], floor_margin)


def with_floor(top: dict[str, float], found: list[float | None], floor_margin: float) -> tuple[list[float], int]:
    """`found` with each None set to the floor (the lowest of `top` minus `floor_margin`), and how many were."""
    if not top:
        raise RemoteError("the endpoint returned an empty top_logprobs list")
    floor = min(top.values()) - floor_margin
    return [floor if v is None else v for v in found], sum(v is None for v in found)
