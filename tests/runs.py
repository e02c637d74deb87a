"""Run configs for tests: resolved the way `nograd run` and the service resolve them; bundled tasks as user
datasets."""

from __future__ import annotations

import json
from pathlib import Path

from nograd.config import ResolvedConfig, RunConfig
from nograd.methods import resolve
from nograd.pipeline import load_task
from nograd.tasks import get_task


def resolved(**options) -> ResolvedConfig:
    """`RunConfig(**options)` (bundled task `mr` unless given) resolved on its task."""
    config = RunConfig.from_dict(options)
    return resolve(config, load_task(config))


def task_files(folder: Path, task: str, per_label: int, n_test: int) -> tuple[Path, Path, dict]:
    """A bundled task as a user's dataset: `per_label` pool rows of each label in train.jsonl and its first
    `n_test` test rows in test.jsonl, under `folder`; returns both paths and the task's template and verbalizer as
    upload/`RunConfig` options (small test files keep a real model's test passes short)."""
    spec = get_task(task)
    files = {
        folder / "train.jsonl": [
            e for label in spec.labels for e in [x for x in spec.pool if x.label == label][:per_label]
        ],
        folder / "test.jsonl": list(spec.test[:n_test]),
    }
    for path, rows in files.items():
        path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows))
    words = ",".join(f"{label}:{word}" for label, word in spec.verbalizer.items())
    return *files, {"template": spec.template, "verbalizer": words}
