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
import typing
from dataclasses import fields, replace
from pathlib import Path

from nograd.config import ConfigError, RunConfig
from nograd.methods import COMMON_DEFAULTS, METHODS
from nograd.sdk import ApiError

from .bars import PhaseBar
from .client import CliError
from .options import option_type as _option_type
from .service import add_commands


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


async def _run(config, data, out: Path | None, bar: PhaseBar) -> dict:
    from nograd.endpoints import local_client, open_client
    from nograd.pipeline import run
    from nograd.progress import Phase

    async def local():
        return local_client(config)

    where = f"{config.model} ({config.dtype})" if config.endpoint is None else "the remote endpoint"
    bar.phase(Phase("loading", label=f"loading {where}" if config.endpoint is None else f"connecting to {where}"))
    key = os.environ.get(config.endpoint["api_key_secret"]) if (config.endpoint or {}).get("api_key_secret") else None
    client = await open_client(config, local=local, api_key=key)
    try:
        return await run(config, client, out_dir=out, on_generation=bar.generation, data=data, on_phase=bar.phase)
    finally:
        await client.aclose()


def cmd_run(args: argparse.Namespace) -> int:
    from nograd.pipeline import resolve_run

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    if values.get("dataset"):
        values["task"] = None
    config, data = resolve_run(RunConfig.from_dict(values))  # every error before the model loads
    for note in config.notes:  # what was chosen from the data for the user (also in config.json)
        print(f"nograd: note: {note}", file=sys.stderr)
    bar = PhaseBar()
    try:
        result = asyncio.run(_run(config, data, Path(args.out) if args.out else None, bar))
    finally:
        bar.close()
    print(json.dumps({k: v for k, v in result.items() if k != "data_hashes"}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nograd.artifacts import load_prompt
    from nograd.endpoints import local_client
    from nograd.pipeline import load_task, score, to_examples
    from nograd.progress import Phase

    saved = load_prompt(args.prompt)
    config = saved["config"]
    if args.task or args.dataset:
        config = (
            replace(config, task=args.task, dataset=None)
            if args.task
            else replace(config, task=None, dataset=args.dataset)
        )
    task = load_task(config)
    split = to_examples(task, {"test": task.test, "pool": task.pool}[args.split])
    dtype = args.dtype or saved["scoring"].get("dtype")  # by default the prompt's (a service job: its workers')
    bar = PhaseBar()
    try:
        bar.phase(Phase("loading", label=f"loading {config.model} ({dtype or config.dtype})"))
        client = local_client(config, dtype=dtype, device=args.device, memory_cap_mb=args.memory_cap_mb)
        counting = Phase("test", 0, len(split), "examples", label=f"scoring the prompt on {args.split}")
        bar.phase(counting)
        chunk = saved["scoring"].get("request_examples")
        result = asyncio.run(
            score(
                client,
                saved["task_spec"],
                split,
                saved["spec"],
                saved["x"],
                text=saved["text"] if saved["spec"].mode == "text" else None,
                progress=lambda done, total: bar.phase(counting.advanced(done)),
                **({} if chunk is None else {"chunk": chunk}),
            )
        )
    finally:
        bar.close()
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_p = sub.add_parser("run", help="optimize a prompt (or score a baseline) and write a run directory")
    _add_config_options(run_p)
    run_p.add_argument("--out", help="run directory (config.json, history.jsonl, result.json, prompt.safetensors)")
    run_p.set_defaults(func=cmd_run)
    eval_p = sub.add_parser("eval", help="re-score a saved prompt")
    eval_p.add_argument(
        "--prompt", required=True, help="the saved prompt: RUN_DIR/prompt.safetensors, or a `nograd download`ed file"
    )
    eval_p.add_argument("--task", help="bundled task (default: the run's)")
    eval_p.add_argument("--dataset", help="dataset file (default: the run's)")
    eval_p.add_argument(
        "--split",
        default="test",
        choices=["test", "pool"],
        help="test: the held-out examples; pool: those the few-shot sets are drawn from (default %(default)s)",
    )
    eval_p.add_argument("--dtype", default=None, help="score in this dtype (default: the one the prompt was scored in)")
    eval_p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ... (default: the run's)")
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


def _version() -> str:
    """The installed distribution's version (what `pip show nograd` says)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nograd")
    except PackageNotFoundError:
        return "(not installed: run `pip install -e .`)"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 a followed job did not succeed, 2 an error (one line on stderr, no traceback),
    130 interrupted (Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, ApiError, CliError) as exc:
        print(f"nograd: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        print("nograd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
