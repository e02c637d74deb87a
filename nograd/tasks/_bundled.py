"""The bundled tasks: their definitions and loading their checked-in data files.

The data files are built by ``scripts/build_tasks.py``; MANIFEST.json holds their hashes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path

from nograd.tasks._errors import TaskDataError, UnknownTaskError
from nograd.tasks._example import Example
from nograd.tasks._task import Task

DATA_DIR = Path(__file__).resolve().parent / "data"

# One place for the task definitions. Label order = verbalizer order. Templates put the
# label word last, so causal LMs read it as the next token.
TASK_SPECS: dict[str, dict] = {
    "mr": {
        "template": "Review: {text}\nSentiment: {mask}",
        "verbalizer": {"negative": "negative", "positive": "positive"},
        "metric": "accuracy",
    },
    "trec": {
        "template": "Question: {text}\nAnswer type: {mask}",
        "verbalizer": {
            "ABBR": "abbreviation",
            "DESC": "description",
            "ENTY": "entity",
            "HUM": "person",
            "LOC": "location",
            "NUM": "number",
        },
        "metric": "accuracy",
    },
    "sms": {
        "template": "Message: {text}\nIs this message spam? {mask}",
        "verbalizer": {"ham": "no", "spam": "yes"},
        "metric": "macro_f1",
    },
    "bbc": {
        "template": "Article: {text}\nTopic: {mask}",
        "verbalizer": {
            "business": "business",
            "entertainment": "entertainment",
            "politics": "politics",
            "sport": "sports",
            "tech": "technology",
        },
        "metric": "accuracy",
    },
}


def list_tasks() -> list[str]:
    """Returns the names of the bundled tasks, sorted."""
    return sorted(TASK_SPECS)


@functools.cache
def get_task(name: str) -> Task:
    """Returns a bundled task with its data (cached: do not mutate the result).

    Raises:
        UnknownTaskError: if ``name`` is not a bundled task.
        TaskDataError: if the data file is missing or was modified.
    """
    return load_bundled(name, DATA_DIR)


def load_bundled(name: str, data_dir: Path) -> Task:
    """Loads bundled task ``name`` from ``data_dir`` (uncached; ``get_task`` is the cached one).

    Raises:
        UnknownTaskError: if ``name`` is not a bundled task.
        TaskDataError: if MANIFEST.json or the data file is missing, or the hash differs.
    """
    if name not in TASK_SPECS:
        raise UnknownTaskError(
            f"unknown task {name!r}; available tasks: "
            f"{', '.join(list_tasks())} (or load your own data with "
            "load_user_dataset)"
        )
    entry = _manifest(Path(data_dir)).get(name)
    if entry is None:
        raise TaskDataError(
            f"{data_dir}/MANIFEST.json has no entry for {name!r}; rebuild the data with `python scripts/build_tasks.py`"
        )
    path = Path(data_dir) / entry["file"]
    if not path.is_file():
        raise TaskDataError(
            f"data file {path} is missing; restore it with "
            "`git checkout nograd/tasks/data` or run scripts/build_tasks.py"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise TaskDataError(
            f"data file {path} was modified: sha256 {digest[:12]}... does not "
            f"match MANIFEST.json ({entry['sha256'][:12]}...); restore it with "
            "`git checkout nograd/tasks/data` or rebuild with "
            "`python scripts/build_tasks.py`"
        )
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    splits: dict[str, list[Example]] = {"pool": [], "test": []}
    for line in data.decode("utf-8").splitlines():
        row = json.loads(line)
        splits[row["split"]].append(Example(text=row["text"], label=row["label"]))
    spec = TASK_SPECS[name]
    return Task(
        name=name,
        labels=tuple(spec["verbalizer"]),
        verbalizer=spec["verbalizer"],
        template=spec["template"],
        metric=spec["metric"],
        pool=tuple(splits["pool"]),
        test=tuple(splits["test"]),
        version=entry["version"],
        fields=("text",),
    )


def _manifest(data_dir: Path) -> dict:
    path = data_dir / "MANIFEST.json"
    if not path.is_file():
        raise TaskDataError(
            f"{path} is missing; restore it with `git checkout "
            "nograd/tasks/data` or run `python scripts/build_tasks.py`"
        )
    return json.loads(path.read_text(encoding="utf-8"))
