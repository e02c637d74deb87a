"""Studies' arithmetic, without I/O: a sweep expanded into job bodies (one per cell and seed), each body's errors
located in the request (`sweep.<key>[i]` or `base.<field>`), and a study's summary from its jobs (status counts,
mean and sample std of the metrics per cell)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from ..store import TERMINAL, Status
from .errors import Invalid
from .schemas import SWEEP_KEYS, JobCreate

JOB_NAME_LENGTH = 200  # JobCreate.name's bound
BASE_KEY = "(base)"  # the key of the one cell of a study that sweeps seeds only


@dataclass(frozen=True)
class PlannedJob:
    """One job of a study: its cell, the request body it is validated as, and where each swept value it took sits
    in the sweep (`positions`: key -> index into `sweep[key]`, seed included when swept)."""

    cell: int
    body: dict[str, Any]
    positions: dict[str, int]

    def locate(self, field: str) -> str:
        """The request location of an error on the job's `field` (e.g. `options.dim`): the swept value that set it,
        else the base's field."""
        for key in sorted(self.positions, key=len, reverse=True):  # options.dim before options
            if field == key or field.startswith(f"{key}."):
                return f"sweep.{key}[{self.positions[key]}]"
        return f"base.{field}"


@dataclass(frozen=True)
class Cell:
    key: str
    params: dict[str, Any]
    seeds: list[Any]


def study_size(sweep: dict[str, list]) -> int:
    """Jobs the sweep makes: the product of the value counts (seed's included)."""
    return math.prod(len(values) for values in sweep.values())


def check_size(sweep: dict[str, list], largest: int, why: str) -> int:
    """The sweep's job count; `Invalid` on `sweep` when it exceeds `largest` (`why` names the limits)."""
    size = study_size(sweep)
    if size > largest:
        shape = " x ".join(f"{len(values)} {key}" for key, values in sweep.items())
        raise Invalid("sweep", f"the sweep makes {size} jobs ({shape}); a study may have at most {largest} ({why})")
    return size


def check_sweep(sweep: dict[str, list]) -> None:
    """`Invalid` naming `sweep.<key>` for a key that is not a job's field or option (the message lists those that
    are), or `sweep.<key>[i]` for a value that repeats an earlier one of the same key."""
    for key, values in sweep.items():
        if key not in SWEEP_KEYS:
            shown = key if len(key) <= 100 else f"{key[:100]}..."
            raise Invalid(
                f"sweep.{shown}",
                f"{shown!r} cannot be swept; sweep keys are a job's fields and options: {', '.join(SWEEP_KEYS)}",
            )
        seen: dict[str, int] = {}
        for i, value in enumerate(values):
            canonical = json.dumps(value, sort_keys=True)
            if canonical in seen:
                raise Invalid(
                    f"sweep.{key}[{i}]",
                    f"{_shown(value)} repeats sweep.{key}[{seen[canonical]}]; give each value once",
                )
            seen[canonical] = i


def expand(name: str, base: dict[str, Any], sweep: dict[str, list]) -> tuple[list[Cell], list[PlannedJob]]:
    """The study's cells (each combination of the swept keys other than seed, in the sweep's order, the last key
    varying fastest) and its jobs, cell by cell and seed by seed. A swept value replaces the base's: top-level keys
    first, then `options.<name>` ones inside the base's options. Each job is named `<name> <key>=<value>...
    seed=<seed>` (cut to 200 characters) and keeps the base's tags."""
    keys = [key for key in sweep if key != "seed"]
    seeds = sweep.get("seed", [base.get("seed", JobCreate.model_fields["seed"].default)])
    cells, planned = [], []
    for index, combination in enumerate(itertools.product(*(range(len(sweep[key])) for key in keys))):
        params = {key: sweep[key][i] for key, i in zip(keys, combination)}
        words = [f"{key}={_shown(value)}" for key, value in params.items()]
        cells.append(Cell(", ".join(words) or BASE_KEY, params, list(seeds)))
        for s, seed in enumerate(seeds):
            body = _merged(base, params)
            if "seed" in sweep:
                body["seed"] = seed
            body["name"] = " ".join([name, *words, f"seed={_shown(seed)}"])[:JOB_NAME_LENGTH]
            positions = dict(zip(keys, combination)) | ({"seed": s} if "seed" in sweep else {})
            planned.append(PlannedJob(index, body, positions))
    return cells, planned


def _merged(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(base)
    for key, value in params.items():
        if "." not in key:
            body[key] = copy.deepcopy(value)
    options = {key.split(".", 1)[1]: value for key, value in params.items() if "." in key}
    if options:
        current = body.get("options", {})
        if isinstance(current, dict):  # else the job's validation names base.options
            body["options"] = {**current, **copy.deepcopy(options)}
    return body


def _shown(value: Any) -> str:
    """A swept value in a cell's key and a job's name: strings as they are, the rest as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


# ---------------------------------------------------------------- a study's summary
def summary(study: dict, jobs: list[dict]) -> dict:
    """A study as `StudyPublic`: its request, its jobs by status, whether all ended, and per cell its jobs, their
    counts and the mean and sample std (ddof=1) of best_dev_metric and test_metric over its succeeded jobs.

    Args:
        study: a `Store.get_study` row.
        jobs: `Store.study_jobs` rows of this study's jobs.
    """
    by_id = {job["id"]: job for job in jobs}
    cells = []
    for cell in study["layout"]:
        members = [by_id[job_id] for job_id in cell["job_ids"] if job_id in by_id]
        succeeded = [job for job in members if job["status"] == Status.succeeded.value]
        cells.append(
            {
                "key": cell["key"],
                "params": cell["params"],
                "job_ids": cell["job_ids"],
                "seeds": cell["seeds"],
                "counts": _counts(members),
                "n_done": sum(job["status"] in TERMINAL for job in members),
                "dev_metric": _metric([job["best_dev_metric"] for job in succeeded]),
                "test_metric": _metric([job["test_metric"] for job in succeeded]),
            }
        )
    counts = _counts(jobs)
    return {
        "id": study["id"],
        "name": study["name"],
        "created_at": study["created_at"],
        "base": study["base"],
        "sweep": study["sweep"],
        "n_jobs": study["n_jobs"],
        "counts": counts,
        "done": sum(counts[status] for status in TERMINAL) == study["n_jobs"],
        "cells": cells,
    }


def _counts(jobs: list[dict]) -> dict[str, int]:
    counts = {status.value: 0 for status in Status}
    for job in jobs:
        counts[job["status"]] += 1
    return counts


def _metric(values: list[float | None]) -> dict | None:
    """Mean, sample std (None below two values) and count of the values reported; None when none was."""
    reported = [v for v in values if v is not None]
    if not reported:
        return None
    std = statistics.stdev(reported) if len(reported) > 1 else None
    return {"mean": statistics.fmean(reported), "std": std, "n": len(reported)}
