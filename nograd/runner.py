"""One run end to end: task -> few-shot split -> baseline or search -> test metric -> run directory."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from clients.types import EvalRequest, Examples, PromptSpec, TaskSpec
from nograd.tasks import Example, Task, examples_hash, get_task, load_user_dataset

from . import artifacts
from .config import SEARCH_METHODS, RunConfig
from .discrete import make_search
from .search import PromptSearch

TEST_CHUNK = 256  # examples per evaluation request when scoring a test set


@dataclass
class RunData:
    task: Task
    spec: TaskSpec
    train: Examples
    dev: Examples
    test: Examples
    hashes: dict


def load_task(config: RunConfig) -> Task:
    if config.task is not None:
        return get_task(config.task)
    return load_user_dataset(config.dataset, template=config.template, verbalizer=config.verbalizer,
                             text_field=config.text_field, text2_field=config.text2_field,
                             label_field=config.label_field, metric=config.metric, test_path=config.test_dataset,
                             test_fraction=config.test_fraction, seed=config.seed)


def to_examples(task: Task, examples: list[Example] | tuple[Example, ...]) -> Examples:
    pair = len(task.fields) == 2
    return Examples(texts=[e.text for e in examples], labels=[task.label_index(e.label) for e in examples],
                    texts2=[e.text2 for e in examples] if pair else None)


def task_spec(task: Task, demos: list[Example] | None = None) -> TaskSpec:
    return TaskSpec(template=task.template, labels=task.labels,
                    verbalizer=tuple(task.verbalizer[label] for label in task.labels), metric=task.metric,
                    demos=tuple((d.text, d.text2, task.label_index(d.label)) for d in (demos or [])))


def icl_demos(task: Task, train: list[Example], shots_per_class: int, seed: int) -> list[Example]:
    """`shots_per_class` training examples of every label, in a seeded random order."""
    rng = np.random.default_rng([seed, 7])
    chosen = [e for label in task.labels for e in [x for x in train if x.label == label][:shots_per_class]]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def prepare(config: RunConfig) -> RunData:
    task = load_task(config)
    train, dev = task.few_shot(config.k_shot, config.seed)
    demos = icl_demos(task, train, config.icl_shots, config.seed) if config.method == "icl" else None
    if config.method == "icl_search":  # the pool: every training example, in order
        demos = list(train)
        if config.prompt_length is None:
            config.prompt_length = config.icl_shots * len(task.labels)
    hashes = {"train": examples_hash(train), "dev": examples_hash(dev), "test": examples_hash(task.test),
              "task_version": task.version}
    return RunData(task=task, spec=task_spec(task, demos), train=to_examples(task, train),
                   dev=to_examples(task, dev), test=to_examples(task, task.test), hashes=hashes)


async def score(client, spec: TaskSpec, examples: Examples, prompt: PromptSpec, x: np.ndarray | None,
                chunk: int = TEST_CHUNK, text: str | None = None) -> dict:
    """Metric and CE of one prompt on many examples, in chunks (metric computed over all of them)."""
    from service.engine.losses import all_losses

    logits = []
    for start in range(0, len(examples), chunk):
        part = Examples(texts=examples.texts[start:start + chunk], labels=examples.labels[start:start + chunk],
                        texts2=examples.texts2[start:start + chunk] if examples.texts2 else None)
        if prompt.mode == "deep":
            request = EvalRequest(spec, part, prompt, base=x)
        elif prompt.mode == "text":
            request = EvalRequest(spec, part, prompt, texts=[text or ""])
        else:
            request = EvalRequest(spec, part, prompt, z=None if x is None or prompt.mode == "none" else x[None])
        logits.append((await client.evaluate(request)).logits[0])
    stacked = np.concatenate(logits)[None]
    losses, metric = all_losses(stacked, np.asarray(examples.labels), spec.metric)
    return {"metric": float(metric[0]), "ce": float(losses["ce"][0]), "n": len(examples)}


async def finalize(config: RunConfig, data: RunData, client, model_id: str, search: PromptSearch | None,
                   started: float) -> tuple[dict, PromptSpec, np.ndarray | None]:
    """Score the run's prompt (the search's best-dev prompt, or no prompt for a baseline) on train and test.
    Returns (result.json's data, the prompt spec, z)."""
    if search is not None:
        outcome = search.result()
        prompt, x, text = outcome["spec"], outcome["x"], outcome["text"]
        train = await score(client, data.spec, data.train, prompt, x, text=text)
        dev = {"metric": outcome["dev_metric"], "ce": outcome["dev_ce"]}
        calls = search.calls
        extra = {"selected_at_calls": outcome["selected_at_calls"], "best_train_loss": outcome["best_train_loss"],
                 "initial": outcome["initial"], "generations": search.generation,
                 **({} if text is None else {"prompt_text": text})}
    else:
        prompt, x, text = PromptSpec(mode="none"), None, None
        train = await score(client, data.spec, data.train, prompt, x)
        dev = await score(client, data.spec, data.dev, prompt, x)
        calls, extra = 0, {}
    test = await score(client, data.spec, data.test, prompt, x, text=text) if len(data.test) else None
    usage = getattr(client, "usage", None)
    if usage:
        extra["usage"] = dict(usage)
    result = {
        "method": config.method, "task": data.task.name, "metric_name": data.task.metric,
        "train_metric": train["metric"], "dev_metric": dev["metric"],
        "test_metric": test["metric"] if test else None, "test_ce": test["ce"] if test else None,
        "calls": calls, "budget": config.budget if config.method in SEARCH_METHODS else 0,
        "wall_seconds": time.perf_counter() - started, "model_id": model_id, "data_hashes": data.hashes,
        **extra,
    }
    return result, prompt, x


async def run(config: RunConfig, client, out_dir: Path | None = None,
              on_generation: Callable[[dict], None] | None = None) -> dict:
    """Run `config` against `client`; write the run directory if `out_dir` is given. Returns result.json's data."""
    config.validate()
    started = time.perf_counter()
    data = prepare(config)
    info = await client.describe()
    if out_dir is not None:
        artifacts.start_run_dir(out_dir, config)
    search = None
    if config.method in SEARCH_METHODS:
        search = make_search(config, data.spec, data.train, data.dev, info.n_layers)
        initial = await search.start(client)
        if on_generation:
            on_generation({"generation": 0, "calls": 0, "initial": initial})
        while not search.done:
            entry = await search.step(client)
            if out_dir is not None:
                artifacts.append_history(out_dir, entry)
            if on_generation:
                on_generation(entry)
    result, prompt, x = await finalize(config, data, client, info.model_id, search, started)
    if out_dir is not None:
        materialized = None
        if hasattr(client, "materialize") and prompt.mode not in ("text", "demos"):  # endpoints that own the projection can give the prompt tensor
            deep = prompt.mode == "deep"
            materialized = client.materialize(prompt, None if deep else x, x if deep else None)
        artifacts.save_prompt(out_dir / "prompt.safetensors", config=config, spec=prompt, x=x,
                              materialized=materialized, task_spec=data.spec, model_id=info.model_id,
                              text=result.get("prompt_text"))
        (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result
