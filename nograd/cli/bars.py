"""The progress line the CLI shows while a run or a job goes on (`nograd run`, `nograd eval`, `nograd watch`)."""

from __future__ import annotations

import math
import sys


class PhaseBar:
    """One progress line on stderr that follows a run's phases (`nograd.progress`): the phase in words, a bar where
    the phase counts (calls in the search, examples in the final scoring), and the best loss and dev metric so far.
    A phase that cannot count shows its elapsed time only."""

    COUNTED = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"
    UNCOUNTED = "{desc}[{elapsed}{postfix}]"

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=None, dynamic_ncols=True, file=sys.stderr, bar_format=self.UNCOUNTED, desc="starting")
        self.current = None
        self.stats: dict[str, str] = {}

    def phase(self, phase) -> None:
        counting = self.current is not None and self.current.name in ("search", "dev") and self.bar.total
        if counting and phase.name == "dev":  # a dev round inside the search: the search's bar stays
            self.bar.set_description(f"searching ({phase.label})", refresh=False)
        elif self.current is None or phase.name != self.current.name and not (counting and phase.name == "search"):
            self.bar.bar_format = self.COUNTED if phase.total else self.UNCOUNTED
            self.bar.unit = phase.unit or ""
            self.bar.reset(total=phase.total)
            self.bar.set_description(phase.label, refresh=False)
        else:
            self.bar.set_description(phase.label, refresh=False)
        self.current = phase
        if phase.done is not None:
            self.bar.n = phase.done
        self.bar.refresh()

    def generation(self, entry: dict) -> None:
        if "initial" in entry:
            dev = entry["initial"].get("dev_metric")
        else:
            if self.bar.unit == "calls":  # the search's bar (a dev round inside the search keeps it)
                self.bar.n = math.ceil(entry["calls"])  # whole calls: racing spends fractions of one
            self.stats["best_loss"] = f"{entry['best_loss']:.4f}"
            dev = entry["dev"]["best_metric"] if "dev" in entry else None
        if dev is not None:
            self.stats["dev"] = f"{dev:.3f}"
        self.bar.set_postfix(self.stats)

    def show(self, **stats: str) -> None:
        """Numbers to show after the bar (replacing earlier values of the same names)."""
        self.stats.update(stats)
        self.bar.set_postfix(self.stats)

    def close(self) -> None:
        self.bar.close()
