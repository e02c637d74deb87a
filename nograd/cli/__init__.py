"""`nograd` command line: run an optimization, re-score a saved prompt, list bundled tasks; the service's commands
(serve, worker, runner, submit, status, watch, jobs, secret, keys) are in `nograd.cli.service`.

Each command imports what it needs when it runs (the CLI is the top layer: nothing imports it back), so a quick
command such as `nograd jobs` does not load the optimizers, the model libraries or the web stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import types
import typing
from dataclasses import fields, replace
from pathlib import Path

from nograd.config import ConfigError, RunConfig
from nograd.methods import COMMON_DEFAULTS, METHODS
from nograd.sdk import ApiError

from .service import add_commands


def _option_type(annotation) -> tuple[type, dict]:
    """argparse `type` and extra keywords for a RunConfig field's annotation."""
    kind = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: an unset option
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return str, {"choices": list(typing.get_args(kind))}
    if kind is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(kind) is dict or kind is dict:
        return json.loads, {}
    return kind, {}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, its help the field's description (and its default)."""
    hints = typing.get_type_hints(RunConfig, include_extras=True)
    defaults = RunConfig()
    by_method = set(COMMON_DEFAULTS).union(*(m.defaults for m in METHODS.values()))
    for f in fields(RunConfig):
        kind, extra = _option_type(hints[f.name])
        info = typing.get_args(hints[f.name])[1] if typing.get_origin(hints[f.name]) is typing.Annotated else None
        default = getattr(defaults, f.name)
        if f.name in by_method:
            shown = " (default: the method's)"
        else:
            shown = "" if default is None else f" (default {default})"
        help_text = (info.description if info is not None else "") + shown
        if f.name == "method":
            extra["choices"] = list(METHODS)
        if extra.get("action") is None:
            extra["type"] = kind
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, default=default, help=help_text.replace("%", "%%"), **extra
        )


def _progress(budget: int):
    from tqdm import tqdm

    bar = tqdm(total=budget, unit="call", dynamic_ncols=True, file=sys.stderr)
    state = {"dev": None}

    def update(entry: dict) -> None:
        if "initial" in entry:
            state["dev"] = entry["initial"].get("dev_metric")
        else:
            bar.update(entry["calls"] - bar.n)
            if "dev" in entry:
                state["dev"] = entry["dev"]["best_metric"]
            bar.set_postfix(
                best_loss=f"{entry['best_loss']:.4f}", dev=f"{state['dev']:.3f}" if state["dev"] is not None else "-"
            )

    return bar, update


async def _run(config, data, out: Path | None, on_generation) -> dict:
    from nograd.endpoints import local_client, open_client
    from nograd.pipeline import run

    async def local():
        return local_client(config)

    key = os.environ.get(config.endpoint["api_key_secret"]) if (config.endpoint or {}).get("api_key_secret") else None
    client = await open_client(config, local=local, api_key=key)
    try:
        return await run(config, client, out_dir=out, on_generation=on_generation, data=data)
    finally:
        await client.aclose()


def cmd_run(args: argparse.Namespace) -> int:
    from nograd.pipeline import resolve_run

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    if values.get("dataset"):
        values["task"] = None
    config, data = resolve_run(RunConfig.from_dict(values))  # every error before the model loads
    bar, update = _progress(config.budget)
    try:
        result = asyncio.run(_run(config, data, Path(args.out) if args.out else None, update))
    finally:
        bar.close()
    print(json.dumps({k: v for k, v in result.items() if k != "data_hashes"}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nograd.artifacts import load_prompt
    from nograd.endpoints import local_client
    from nograd.pipeline import load_task, score, to_examples

    saved = load_prompt(args.prompt)
    config = saved["config"]
    if args.task or args.dataset:
        config = (
            replace(config, task=args.task, dataset=None)
            if args.task
            else replace(config, task=None, dataset=args.dataset)
        )
    task = load_task(config)
    split = {"test": task.test, "pool": task.pool}[args.split]
    client = local_client(
        config, dtype=args.dtype or saved["scoring"].get("dtype"), device=args.device, memory_cap_mb=args.memory_cap_mb
    )  # by default in the dtype the prompt was scored in (a service job: its workers')
    chunk = saved["scoring"].get("request_examples")
    result = asyncio.run(
        score(
            client,
            saved["task_spec"],
            to_examples(task, split),
            saved["spec"],
            saved["x"],
            text=saved["text"] if saved["spec"].mode == "text" else None,
            **({} if chunk is None else {"chunk": chunk}),
        )
    )
    print(json.dumps({"task": task.name, "split": args.split, "metric_name": task.metric, **result}, indent=2))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from nograd.tasks import get_task, list_tasks

    for name in list_tasks():
        task = get_task(name)
        print(
            f"{name:6s} labels={','.join(task.labels)} metric={task.metric} pool={len(task.pool)} "
            f"test={len(task.test)} template={task.template!r}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nograd", description="Gradient-free prompt tuning for query-only LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="optimize a prompt (or score a baseline) and write a run directory")
    _add_config_options(run_p)
    run_p.add_argument("--out", help="run directory (config.json, history.jsonl, result.json, prompt.safetensors)")
    run_p.set_defaults(func=cmd_run)
    eval_p = sub.add_parser("eval", help="re-score a saved prompt")
    eval_p.add_argument("--prompt", required=True, help="RUN_DIR/prompt.safetensors")
    eval_p.add_argument("--task", help="bundled task (default: the run's)")
    eval_p.add_argument("--dataset", help="dataset file (default: the run's)")
    eval_p.add_argument("--split", default="test", choices=["test", "pool"])
    eval_p.add_argument("--dtype", default=None, help="override the dtype the prompt was scored in")
    eval_p.add_argument("--device", default=None, help="default: the run's")
    eval_p.add_argument(
        "--memory-cap-mb",
        type=float,
        default=None,
        help="activation memory per forward pass (default: the run's; scores do not depend on it)",
    )
    eval_p.set_defaults(func=cmd_eval)
    tasks_p = sub.add_parser("tasks", help="list the bundled tasks")
    tasks_p.set_defaults(func=cmd_tasks)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, ApiError) as exc:
        print(f"nograd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
