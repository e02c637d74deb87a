"""Holding out a user file's test rows: the automatic rule for a file whose user did not choose, and an explicit
fraction. Both are stratified (each label's rows are split alone) and seeded, so one file and one fraction give the
same test rows on every path (`nograd run --dataset`, an uploaded dataset's jobs, `load_user_dataset`).

The rule, for a file of n rows whose label l has n_l rows:
    fraction = min(AUTO_TEST_FRACTION, AUTO_TEST_MAX / n); label l gives floor(fraction * n_l) rows to test.
It is applied only when every label keeps at least AUTO_MIN_POOL rows for train and dev (k_shot 4) and the test set
is not empty; otherwise the file is too small and the run has no test split (a note says so).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from nograd.tasks._errors import DatasetError
from nograd.tasks._example import Example

#: Share of each label's rows held out as test when the user leaves test_fraction unset.
AUTO_TEST_FRACTION = 0.2
#: Most test rows the automatic split takes from a large file (scoring the test set costs model calls).
AUTO_TEST_MAX = 1000
#: Rows of every label the automatic split leaves for train and dev (k_shot 4: 4 train + 4 dev).
AUTO_MIN_POOL = 8
#: Rows of every label any split must leave for train and dev (k_shot 1: 1 train + 1 dev).
MIN_POOL = 2


def label_counts(examples: Sequence[Example]) -> dict[str, int]:
    """Rows per label, in order of first appearance."""
    return dict(Counter(e.label for e in examples))


def held_per_label(counts: Mapping[str, int], fraction: float) -> dict[str, int]:
    """Test rows each label gives at `fraction`: floor(fraction * rows), the one formula every path uses."""
    return {label: int(fraction * n) for label, n in counts.items()}


def auto_test_fraction(counts: Mapping[str, int]) -> tuple[float, str]:
    """The automatic rule (see the module docstring): the fraction to hold out (0.0: none) and a note in words."""
    total = sum(counts.values())
    fraction = min(AUTO_TEST_FRACTION, AUTO_TEST_MAX / total) if total else 0.0
    held = held_per_label(counts, fraction)
    short = {label: n for label, n in counts.items() if n - held[label] < AUTO_MIN_POOL}
    if short or not sum(held.values()):
        label, n = min(counts.items(), key=lambda item: item[1])
        return 0.0, (
            f"no held-out test split (test_metric will be null): label {label!r} has {n} rows, and the automatic "
            f"split needs {AUTO_MIN_POOL + 1} per label; add rows, give a test file (--test-dataset, or test_file "
            "at upload), or set test_fraction"
        )
    return fraction, (
        f"held out {sum(held.values())} of {total} rows as the test set (test_fraction {fraction:g}, stratified by "
        "label; set test_fraction 0 to use every row for train and dev)"
    )


def check_test_fraction(counts: Mapping[str, int], fraction: float) -> str | None:
    """Checks an explicit fraction; returns a note when it holds out nothing.

    Raises:
        DatasetError: (field test_fraction) when a label would keep fewer than MIN_POOL rows that it has without
            a split, naming the largest fraction (in hundredths) that fits.
    """
    held = held_per_label(counts, fraction)
    short = {label: n for label, n in counts.items() if n - held[label] < MIN_POOL}
    if short and _fits(counts, 0.0):  # else the file itself is too small: the k_shot check says so
        label, n = min(short.items(), key=lambda item: item[1])
        largest = max((f / 100 for f in range(100) if _fits(counts, f / 100)), default=0.0)
        raise DatasetError(
            f"test_fraction {fraction:g} leaves label {label!r} {n - held[label]} of its {n} rows for train and dev "
            f"(at least {MIN_POOL} needed: 1 train + 1 dev); the largest test_fraction that fits is {largest:g}",
            field="test_fraction",
        )
    if fraction and not sum(held.values()):
        return f"test_fraction {fraction:g} holds out no rows of this file (test_metric will be null); raise it"
    return None


def _fits(counts: Mapping[str, int], fraction: float) -> bool:
    held = held_per_label(counts, fraction)
    return all(n - held[label] >= MIN_POOL for label, n in counts.items())


def hold_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Splits off `held_per_label(fraction)` rows of each label as test, chosen with `seed`; both parts keep file
    order. Labels are drawn in sorted order, so the split does not depend on which label comes first."""
    if not fraction:
        return examples, []
    rng = np.random.default_rng(seed)
    counts = held_per_label(label_counts(examples), fraction)
    held: set[int] = set()
    for label in sorted(counts):
        idx = [i for i, e in enumerate(examples) if e.label == label]
        held.update(idx[j] for j in rng.choice(len(idx), counts[label], replace=False))
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
