"""`nograd` command line: run an optimization, re-score a saved prompt, list bundled tasks; the service's
commands (serve, worker, submit, status, watch, jobs, keys) are in `service_cli`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import fields
from pathlib import Path

from .config import METHODS, ConfigError, RunConfig

_HELP = {
    "method": f"one of {', '.join(METHODS)}", "task": "bundled task (mr, trec, sms, bbc)",
    "dataset": "your own JSONL/CSV file instead of --task", "template": "e.g. 'Review: {text}\\nSentiment: {mask}'",
    "verbalizer": "label:word pairs, e.g. 'neg:negative,pos:positive'", "budget": "model calls (candidates scored)",
    "optimizer": "cma or ng:<nevergrad optimizer>, e.g. ng:NGOpt", "mode": "bbt prompt injection: cat or add",
    "init": "text whose tokens seed the prompt", "dev_every": "evaluate on dev every N calls",
    "icl_shots": "demonstrations per class for --method icl / icl_search",
    "endpoint": "a remote endpoint as JSON, e.g. '{\"kind\": \"openai\", \"base_url\": \"http://127.0.0.1:8080/v1\", "
                "\"model\": \"m\", \"api_key_secret\": \"OPENAI_API_KEY\"}' (from the CLI, api_key_secret names an "
                "environment variable holding the key)",
}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    for f in fields(RunConfig):
        default = getattr(defaults, f.name)
        kind = type(default) if default is not None else {"bounds": float, "alpha": float, "popsize": int,
                                                          "test_fraction": float, "prompt_length": int, "lr": float,
                                                          "endpoint": json.loads}.get(f.name, str)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                            help=_HELP.get(f.name, f"default {default}"))


def _progress(config: RunConfig):
    from tqdm import tqdm

    bar = tqdm(total=config.budget, unit="call", dynamic_ncols=True, file=sys.stderr)
    state = {"dev": None}

    def update(entry: dict) -> None:
        if "initial" in entry:
            state["dev"] = entry["initial"].get("dev_metric")
        else:
            bar.update(entry["calls"] - bar.n)
            if "dev" in entry:
                state["dev"] = entry["dev"]["best_metric"]
            bar.set_postfix(best_loss=f"{entry['best_loss']:.4f}",
                            dev=f"{state['dev']:.3f}" if state["dev"] is not None else "-")
    return bar, update


def _client(config: RunConfig):
    from clients.local import LocalClient

    if config.endpoint is not None:
        import os

        from clients.remote import EndpointConfig, make_client

        endpoint = EndpointConfig.from_dict(config.endpoint)
        key = os.environ.get(endpoint.api_key_secret) if endpoint.api_key_secret else None
        embedder = None
        if endpoint.kind == "vllm" and endpoint.embedder_model:
            embedder = LocalClient.from_model(endpoint.embedder_model, dtype="fp32").engine
        return make_client(endpoint, key, embedder=embedder)

    return LocalClient.from_model(config.model, dtype=config.dtype, device=config.device,
                                  memory_cap_mb=config.memory_cap_mb)


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import prepare, run

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    if values.get("dataset"):
        values["task"] = None
    config = RunConfig(**values).validate()
    prepare(config)  # data errors surface before the model loads
    client = _client(config)
    bar, update = _progress(config)
    try:
        result = asyncio.run(run(config, client, out_dir=Path(args.out) if args.out else None, on_generation=update))
    finally:
        bar.close()
    print(json.dumps({k: v for k, v in result.items() if k != "data_hashes"}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from clients.local import LocalClient
    from .artifacts import load_prompt
    from .runner import load_task, score, to_examples

    saved = load_prompt(args.prompt)
    config = saved["config"]
    if args.task or args.dataset:
        config.task, config.dataset = (args.task, None) if args.task else (None, args.dataset)
    task = load_task(config)
    split = {"test": task.test, "pool": task.pool}[args.split]
    client = LocalClient.from_model(config.model, dtype=args.dtype or config.dtype, device=args.device)
    result = asyncio.run(score(client, saved["task_spec"], to_examples(task, split), saved["spec"], saved["x"]))
    print(json.dumps({"task": task.name, "split": args.split, "metric_name": task.metric, **result}, indent=2))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import get_task, list_tasks

    for name in list_tasks():
        task = get_task(name)
        print(f"{name:6s} labels={','.join(task.labels)} metric={task.metric} pool={len(task.pool)} "
              f"test={len(task.test)} template={task.template!r}")
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
    eval_p.add_argument("--dtype", default=None, help="override the run's dtype")
    eval_p.add_argument("--device", default="auto")
    eval_p.set_defaults(func=cmd_eval)
    tasks_p = sub.add_parser("tasks", help="list the bundled tasks")
    tasks_p.set_defaults(func=cmd_tasks)
    from .service_cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .client import ApiError

    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, ApiError) as exc:
        print(f"nograd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
