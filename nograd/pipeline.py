"""One run end to end: task -> resolved settings -> few-shot split -> baseline or search -> test metric -> run
directory. The CLI's `nograd run` and the service's jobs both go through here."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from nograd.clients.losses import all_losses
from nograd.clients.protocol import ModelClient
from nograd.clients.types import EvalRequest, Examples, ModelInfo, PromptSpec, TaskSpec
from nograd.engine import MICRO_BATCH
from nograd.tasks import Example, Task, TaskError, UnknownTaskError, examples_hash, get_task, load_user_dataset

from . import analysis, artifacts
from .config import ConfigError, ResolvedConfig, RunConfig
from .methods import METHODS, make_search, resolve
from .progress import OnPhase, Phase, report
from .search import PromptSearch

C = TypeVar("C", bound=RunConfig)

#: Examples per evaluation request when scoring a dev or test set (a fixed chunking, so every path scores the same
#: requests; recorded in saved prompts).
TEST_CHUNK = 256


#: The dtypes an engine loads a model in (`ModelInfo.dtype` of a local or queued model).
ENGINE_DTYPES = ("bf16", "fp16", "fp32")


def scoring(config: ResolvedConfig, info: ModelInfo) -> dict:
    """What scoring a prompt the same way again needs beyond the model and the prompt file's task spec (saved with
    every prompt): the dtype the endpoint ran the model in (a service's workers decide it, not the job), the
    evaluation micro-batch and the examples per request."""
    dtype = info.dtype if info.dtype in ENGINE_DTYPES else config.dtype
    return {"dtype": dtype, "micro_batch": MICRO_BATCH, "request_examples": TEST_CHUNK, "model_id": info.model_id}


@dataclass
class RunData:
    task: Task
    spec: TaskSpec
    train: Examples
    dev: Examples
    test: Examples
    hashes: dict


def load_task(config: RunConfig) -> Task:
    """The bundled task or the user's dataset `config` names; raises ConfigError naming the field."""
    if (config.task is None) == (config.dataset is None):
        raise ConfigError("task", "give exactly one of a bundled task (--task) or a dataset file (--dataset)")
    if config.task is not None:
        try:
            return get_task(config.task)
        except UnknownTaskError as exc:
            raise ConfigError("task", str(exc)) from None
    if not config.template or not config.verbalizer:
        raise ConfigError("template", "a dataset file needs --template and --verbalizer")
    try:
        return load_user_dataset(
            config.dataset,
            template=config.template,
            verbalizer=config.verbalizer,
            text_field=config.text_field,
            text2_field=config.text2_field,
            label_field=config.label_field,
            metric=config.metric,
            test_path=config.test_dataset,
            test_fraction=config.test_fraction,  # split seed 0 on every path: a file's test rows never change
        )
    except TaskError as exc:  # the dataset's own fields keep their names; the rest is the file
        raise ConfigError("dataset" if exc.field in (None, "file") else exc.field, str(exc)) from None


def to_examples(task: Task, examples: list[Example] | tuple[Example, ...]) -> Examples:
    pair = len(task.fields) == 2
    return Examples(
        texts=[e.text for e in examples],
        labels=[task.label_index(e.label) for e in examples],
        texts2=[e.text2 for e in examples] if pair else None,
    )


def task_spec(task: Task, demos: list[Example] | None = None, *, chat: bool = False) -> TaskSpec:
    return TaskSpec(
        template=task.template,
        labels=task.labels,
        verbalizer=tuple(task.verbalizer[label] for label in task.labels),
        metric=task.metric,
        demos=tuple((d.text, d.text2, task.label_index(d.label)) for d in (demos or [])),
        chat=chat,
    )


def icl_demos(task: Task, train: list[Example], shots_per_class: int, seed: int) -> list[Example]:
    """`shots_per_class` training examples of every label, in a seeded random order."""
    rng = np.random.default_rng([seed, 7])
    chosen = [e for label in task.labels for e in [x for x in train if x.label == label][:shots_per_class]]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def prepare(config: ResolvedConfig, task: Task | None = None) -> RunData:
    """The run's data: the few-shot split, the task spec with the method's demonstrations, the data hashes."""
    task = task or load_task(config)
    try:
        train, dev = task.few_shot(config.k_shot, config.seed)
    except TaskError as exc:
        raise ConfigError("k_shot", str(exc)) from None
    demos = METHODS[config.method].demos
    demos = (
        icl_demos(task, train, config.icl_shots, config.seed)
        if demos == "sample"
        else list(train)
        if demos == "pool"
        else None
    )
    hashes = {
        "train": examples_hash(train),
        "dev": examples_hash(dev),
        "test": examples_hash(task.test),
        "task_version": task.version,
    }
    return RunData(
        task=task,
        spec=task_spec(task, demos, chat=config.chat_template),
        train=to_examples(task, train),
        dev=to_examples(task, dev),
        test=to_examples(task, task.test),
        hashes=hashes,
    )


def resolve_run(config: RunConfig) -> tuple[ResolvedConfig, RunData]:
    """`config` resolved on its task (`nograd.methods.resolve`) and the run's data: every error a run would meet
    before the model loads (unknown task, bad file, too few examples for k_shot, incompatible endpoint, ...)."""
    task = load_task(config)
    resolved = resolve(config, task)
    return resolved, prepare(resolved, task)


async def score(
    client: ModelClient,
    spec: TaskSpec,
    examples: Examples,
    prompt: PromptSpec,
    x: np.ndarray | None,
    *,
    text: str | None = None,
    generation: int = 0,
    chunk: int = TEST_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    predictions: bool = False,
) -> dict:
    """Metric and CE of one prompt on many examples, in requests of `chunk` examples (the metric over all).
    `progress(done, total)` is called after each request with the examples scored so far. With `predictions`,
    also each example's predicted label index (`predictions`: the argmax the metric counts)."""
    logits = []
    for start in range(0, len(examples), chunk):
        part = examples.part(start, start + chunk)
        if prompt.mode == "deep":
            request = EvalRequest(spec, part, prompt, base=x, generation=generation)
        elif prompt.mode == "text":
            request = EvalRequest(spec, part, prompt, texts=[text or ""], generation=generation)
        else:
            request = EvalRequest(
                spec, part, prompt, z=None if x is None or prompt.mode == "none" else x[None], generation=generation
            )
        logits.append((await client.evaluate(request)).logits[0])
        if progress is not None:
            progress(min(start + chunk, len(examples)), len(examples))
    stacked = np.concatenate(logits)[None]
    losses, metric = all_losses(stacked, np.asarray(examples.labels), spec.metric)
    scored = {"metric": float(metric[0]), "ce": float(losses["ce"][0]), "n": len(examples)}
    if predictions:
        scored["predictions"] = [int(i) for i in stacked[0].argmax(axis=-1)]
    return scored


async def finalize(
    config: ResolvedConfig,
    data: RunData,
    client: ModelClient,
    model_id: str,
    search: PromptSearch | None,
    started: float,
    on_phase: OnPhase | None = None,
) -> tuple[dict, PromptSpec, np.ndarray | None, dict]:
    """Score the run's prompt (the search's best-dev prompt, or no prompt for a baseline) on train and test.
    Returns (result.json's data, the prompt spec, z, the run's analysis: `nograd.analysis.explain`, for which the
    manual prompt is scored on test too unless the run's prompt is the manual one)."""
    generation = (search.generation if search else 0) + 1

    def counting(name: str, examples: Examples) -> Callable[[int, int], None]:
        """Report phase `name` now and, as examples are scored, its progress."""
        phase = Phase(name, 0, len(examples), "examples")
        report(on_phase, phase)
        return lambda done, total: report(on_phase, phase.advanced(done))

    outcome = search.result() if search is not None else None
    if outcome is not None:
        prompt, x, text = outcome["spec"], outcome["x"], outcome["text"]
    else:  # a baseline: no prompt
        prompt, x, text = PromptSpec(mode="none"), None, None
    train = await score(
        client,
        data.spec,
        data.train,
        prompt,
        x,
        text=text,
        generation=generation,
        progress=counting("final_train", data.train),
    )
    if outcome is not None:
        dev = {"metric": outcome["dev_metric"], "ce": outcome["dev_ce"]}
        calls = search.calls
        extra = {
            "selected_at_calls": outcome["selected_at_calls"],
            "best_train_loss": outcome["best_train_loss"],
            "initial": outcome["initial"],
            "generations": search.generation,
            "stopped": outcome["stopped"],  # why it stopped before its budget (None: it used the whole budget)
            "unused_budget": config.budget - calls,
            **({} if text is None else {"prompt_text": text}),
        }
    else:
        report(on_phase, Phase("dev"))
        dev = await score(client, data.spec, data.dev, prompt, x, generation=generation)
        calls, extra = 0, {}
    test = None
    if len(data.test):
        test = await score(
            client,
            data.spec,
            data.test,
            prompt,
            x,
            text=text,
            generation=generation,
            progress=counting("test", data.test),
            predictions=True,
        )
    analysis = await _analysis(data, client, prompt, x, text, test, generation, on_phase)
    if client.usage:
        extra["usage"] = dict(client.usage)
    result = {
        "method": config.method,
        "task": data.task.name,
        "metric_name": data.task.metric,
        "train_metric": train["metric"],
        "dev_metric": dev["metric"],
        "test_metric": test["metric"] if test else None,
        "test_ce": test["ce"] if test else None,
        "calls": calls,
        "budget": config.budget if METHODS[config.method].is_search else 0,
        "wall_seconds": time.perf_counter() - started,
        "model_id": model_id,
        "data_hashes": data.hashes,
        **extra,
    }
    return result, prompt, x, analysis


#: The manual prompt's test scores per (model, dtype, test data, task, request size), kept in this process so jobs
#: on the same task and model score it once (the test pass is the slowest part of a short job). Local models and
#: the service's workers only: they score deterministically and charge nothing.
_MANUAL_TEST: OrderedDict[tuple, dict] = OrderedDict()
_MANUAL_TEST_SIZE = 32


def _manual_key(data: RunData, info: ModelInfo) -> tuple | None:
    """Where the manual prompt's test scores on this data and model are kept (None: not kept, a remote endpoint)."""
    if info.kind == "remote":
        return None
    task = analysis.manual_task(data.spec)
    return (info.model_id, info.kind, info.dtype, data.hashes["test"], data.hashes["task_version"], task, TEST_CHUNK)


def _remember_manual(key: tuple | None, scored: dict) -> None:
    if key is not None:
        _MANUAL_TEST[key] = scored
        while len(_MANUAL_TEST) > _MANUAL_TEST_SIZE:
            _MANUAL_TEST.popitem(last=False)


async def _manual_test(data: RunData, client: ModelClient, generation: int, on_phase: OnPhase | None) -> dict:
    """The manual prompt (the template alone) scored on test, with predictions."""
    task = analysis.manual_task(data.spec)
    key = _manual_key(data, await client.describe())
    if key in _MANUAL_TEST:
        _MANUAL_TEST.move_to_end(key)
        return _MANUAL_TEST[key]
    phase = Phase("test", 0, len(data.test), "examples", label="scoring the manual prompt on the test set, to compare")
    report(on_phase, phase)
    scored = await score(
        client,
        task,
        data.test,
        PromptSpec(mode="none"),
        None,
        generation=generation,
        progress=lambda done, total: report(on_phase, phase.advanced(done)),
        predictions=True,
    )
    _remember_manual(key, scored)
    return scored


async def _analysis(
    data: RunData,
    client: ModelClient,
    prompt: PromptSpec,
    x: np.ndarray | None,
    text: str | None,
    test: dict | None,
    generation: int,
    on_phase: OnPhase | None,
) -> dict:
    """`nograd.analysis.explain` for the run's prompt, its test scores `test` (None: no test split) and the manual
    prompt's (scored here unless the run's prompt is the manual one); nearest tokens where the endpoint has them."""
    manual = None
    if test is not None:
        same = analysis.is_manual(data.spec, prompt, x, text)
        manual = test if same else await _manual_test(data, client, generation, on_phase)
        if same and analysis.manual_task(data.spec) == data.spec:  # a manual run: later runs need no second pass
            _remember_manual(_manual_key(data, await client.describe()), test)
    neighbors = None
    if prompt.mode in ("cat", "add"):
        neighbors = await client.nearest_tokens(prompt, x, analysis.NEAREST_K)
    described = analysis.describe_prompt(data.spec, prompt, x, text, neighbors)
    return analysis.explain(
        data.spec, data.test, metric_name=data.task.metric, prompt=described, tuned=test, manual=manual
    )


async def run(
    config: ResolvedConfig,
    client: ModelClient,
    out_dir: Path | None = None,
    on_generation: Callable[[dict], None] | None = None,
    data: RunData | None = None,
    on_phase: OnPhase | None = None,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """Run `config` against `client`; write the run directory if `out_dir` is given. Returns result.json's data.
    `on_phase` is told what the run is doing (`nograd.progress`).

    A search continues from `resume` (a `PromptSearch.state_dict()` of the same config and data, e.g. from
    `on_checkpoint`) instead of starting; `on_checkpoint` gets the search's state after its start and after every
    generation, so an interrupted run can go on where it stopped and end with the same prompt. The result's
    `wall_seconds` counts this call only."""
    started = time.perf_counter()
    data = data or prepare(config)
    info = await client.describe()
    if out_dir is not None:
        artifacts.start_run_dir(out_dir, config)
    search = make_search(config, data.spec, data.train, data.dev, info.n_layers)
    if search is None and resume is not None:
        raise ValueError(f"resume: method {config.method!r} is a baseline and has no search state to resume")
    if search is not None:
        search.on_phase = on_phase
        if resume is not None:
            search.load_state(resume)
        else:
            initial = await search.start(client)
            if on_generation:
                on_generation({"generation": 0, "calls": 0, "initial": initial})
            if on_checkpoint:
                on_checkpoint(search.state_dict())
        while not search.done:
            entry = await search.step(client)
            if out_dir is not None:
                artifacts.append_history(out_dir, entry)
            if on_generation:
                on_generation(entry)
            if on_checkpoint:
                on_checkpoint(search.state_dict())
    result, prompt, x, analysis = await finalize(config, data, client, info.model_id, search, started, on_phase)
    if out_dir is not None:
        report(on_phase, Phase("saving"))
        (out_dir / "prompt.safetensors").write_bytes(await prompt_file(config, data, client, info, result, prompt, x))
        (out_dir / "result.json").write_text(json.dumps(result, indent=2))
        artifacts.save_analysis(out_dir, analysis)
    return result


async def prompt_file(
    config: ResolvedConfig,
    data: RunData,
    client: ModelClient,
    info: ModelInfo,
    result: dict,
    prompt: PromptSpec,
    x: np.ndarray | None,
) -> bytes:
    """The run's prompt file (`nograd.artifacts.prompt_bytes`), with the tensors the endpoint can build: the
    materialized soft prompt (cat/add/deep) and, for cat/add on any but a masked LM, its virtual tokens (what the
    PEFT and vLLM exports need; `ModelClient.virtual_tokens`). Discrete prompts have no tensor."""
    soft = prompt.mode in ("cat", "add")
    materialized = await client.materialize(prompt, x) if soft or prompt.mode == "deep" else None
    virtual = await client.virtual_tokens(data.spec, prompt, x) if soft and info.kind != "masked" else None
    return artifacts.prompt_bytes(
        config=config,
        spec=prompt,
        x=x,
        materialized=materialized,
        virtual_tokens=virtual,
        task_spec=data.spec,
        model_id=info.model_id,
        scoring=scoring(config, info),
        text=result.get("prompt_text"),
    )


def located(config: C, dataset: Path | str | None, test_dataset: Path | str | None = None) -> C:
    """`config` with its dataset file at `dataset` (and its uploaded test file at `test_dataset`) on this machine
    (the service materializes uploads per runner); the settings are unchanged."""
    if test_dataset is not None:
        config = replace(config, test_dataset=str(test_dataset))
    return config if dataset is None else replace(config, dataset=str(dataset))
