"""What a run is doing now, for whoever waits on it: the CLI's bars, a service job's `phase`, the dashboard.

A run goes through phases in this order (a baseline has no `initial` or `search`; a resumed job skips `initial`):

    loading -> initial -> search (<-> dev) -> final_train -> test -> saving

`search` counts calls against the budget and `test` counts examples scored, so both have `done`/`total`; the others
are short or cannot say how far along they are. Phases are reported through a plain callback (`OnPhase`): the
caller decides what to do with them (print, store, ignore), the run never waits on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

LABELS = {
    "queued": "waiting for a runner",
    "loading": "loading the model",
    "initial": "scoring the initial prompt on train and dev",
    "search": "searching",
    "dev": "scoring candidates on dev",
    "final_train": "scoring the chosen prompt on train",
    "test": "scoring the chosen prompt on the test set",
    "saving": "saving the prompt",
}


@dataclass(frozen=True)
class Phase:
    """One phase of a run. `label` defaults to the phase's description in words; `done`/`total` count `unit`s."""

    name: str
    done: int | None = None
    total: int | None = None
    unit: str | None = None
    label: str = ""
    since: float = field(default_factory=time.time)

    def __post_init__(self):
        if self.name not in LABELS:
            raise ValueError(f"unknown phase {self.name!r}; one of {', '.join(LABELS)}")
        if not self.label:
            object.__setattr__(self, "label", LABELS[self.name])

    def to_dict(self) -> dict:
        return asdict(self)

    def advanced(self, done: int) -> Phase:
        """The same phase further along (its start time kept)."""
        return Phase(self.name, done, self.total, self.unit, self.label, self.since)


OnPhase = Callable[[Phase], None]


def report(on_phase: OnPhase | None, phase: Phase) -> None:
    """Tell `on_phase` (if any) about `phase`."""
    if on_phase is not None:
        on_phase(phase)
