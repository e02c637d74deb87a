"""Test metric of manual, icl, bbt, bbtv2, bbpl, rlprompt and icl_search on bundled tasks with smollm2-135m,
16-shot, several seeds.

Usage:
    .venv/bin/python bench/quality.py --tasks mr trec --seeds 0 1 2 --budget 300
    .venv/bin/python bench/quality.py --chat-template ...   # the same runs under the model's chat template
Each finished run is cached as JSON under --results (rerunning skips it), so the bench can be resumed. Prints a
table of mean +/- std of the test metric and each method's gain over the manual prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from nograd.clients.local import LocalClient  # noqa: E402
from nograd.config import RunConfig  # noqa: E402
from nograd.engine import build_engine  # noqa: E402
from nograd.pipeline import resolve_run, run, score, task_spec, to_examples  # noqa: E402
from nograd.search import prompt_spec  # noqa: E402
from nograd.tasks import get_task  # noqa: E402

# Per-method settings used by the bench: the methods' defaults (nograd.methods.METHODS), spelled out.
METHOD_OPTIONS = {
    "manual": {},
    "icl": {"icl_shots": 2},
    "bbt": {"mode": "add", "alpha": 0.5, "popsize": 20},
    "bbtv2": {"alpha": 0.2, "popsize": 10},
    "bbpl": {"popsize": 20, "prompt_length": 10, "vocab_size": 200, "lr": 1e-4},
    "rlprompt": {"popsize": 16, "prompt_length": 5, "top_k": 256, "lr": 5e-5},
    "icl_search": {"popsize": 20, "icl_shots": 2, "lr": 1e-3},
}


def _fmt(values: list[float], seeds: int) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    partial = f" ({len(values)} of {seeds} seeds)" if len(values) < seeds else ""
    return f"{100 * statistics.mean(values):5.1f} ± {100 * std:4.1f}{partial}"


def _progress(name: str):
    started = time.perf_counter()

    def show(entry: dict) -> None:
        print(f"  {name}: {entry['calls']} calls, {time.perf_counter() - started:.0f} s", flush=True)

    return show


async def _run_all(args) -> dict:
    client = LocalClient(build_engine(args.model, dtype=args.dtype, memory_cap_mb=args.memory_cap_mb))
    chat = "-chat" if args.chat_template else ""
    results: dict = {}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    # Seeds outermost: an interrupted bench still has every task and method for the seeds it finished.
    for seed, task, method in [(s, t, m) for s in args.seeds for t in args.tasks for m in args.methods]:
        name = f"{task}-{method}{chat}-s{seed}-b{args.budget}"
        path = out / f"{name}.json"
        if path.exists():
            result = json.loads(path.read_text())
        elif args.cached_only:
            continue
        else:
            config, data = resolve_run(
                RunConfig(
                    task=task,
                    method=method,
                    seed=seed,
                    budget=args.budget,
                    model=args.model,
                    dtype=args.dtype,
                    k_shot=args.k_shot,
                    memory_cap_mb=args.memory_cap_mb,
                    chat_template=args.chat_template,
                    **METHOD_OPTIONS[method],
                )
            )
            started = time.perf_counter()
            result = await run(config, client, on_generation=_progress(name) if args.verbose else None, data=data)
            result["config"] = config.to_dict()
            path.write_text(json.dumps(result, indent=2))
            print(
                f"{name}: test {result['test_metric']:.4f} dev {result['dev_metric']:.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        results.setdefault(task, {}).setdefault(method, []).append(result)
    if "bbt" in args.methods:
        for task in args.tasks:
            results[task]["bbt z=0"] = [await _initial_prompt(client, task, out, args.chat_template)]
    return results


async def _initial_prompt(client, name: str, out: Path, chat: bool) -> dict:
    """BBT's starting point (z = 0: the placeholder prompt tokens, no search) on the test set, to show what the
    search itself adds. Seed-independent."""
    path = out / f"{name}-bbt{'-chat' if chat else ''}-init.json"
    if path.exists():
        return json.loads(path.read_text())
    task = get_task(name)
    config, _ = resolve_run(RunConfig(task=name, method="bbt", chat_template=chat, **METHOD_OPTIONS["bbt"]))
    test = await score(
        client,
        task_spec(task, chat=chat),
        to_examples(task, task.test),
        prompt_spec(config, config.mode),
        np.zeros(config.dim),
    )
    result = {"test_metric": test["metric"], "test_ce": test["ce"]}
    path.write_text(json.dumps(result, indent=2))
    return result


def _table(results: dict, args) -> str:
    lines = [
        f"smollm2-135m ({args.dtype}{', chat template' if args.chat_template else ''}), {args.k_shot}-shot, "
        f"seeds {args.seeds}, budget {args.budget} calls for the searches; test metric x100, mean ± std over "
        "seeds",
        "",
    ]
    header = "| method | " + " | ".join(args.tasks) + " |"
    lines += [header, "|---" * (len(args.tasks) + 1) + "|"]
    rows = list(args.methods) + (["bbt z=0"] if "bbt" in args.methods else [])
    for method in rows:
        cells = [
            _fmt(
                [r["test_metric"] for r in results.get(t, {}).get(method, [])],
                1 if method == "bbt z=0" else len(args.seeds),
            )
            for t in args.tasks
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "gain over manual (mean test metric difference, x100):"]
    for method in rows:
        if method == "manual":
            continue
        gains = []
        for t in args.tasks:
            manual, mine = results.get(t, {}).get("manual"), results.get(t, {}).get(method)
            if manual and mine:
                gain = statistics.mean(r["test_metric"] for r in mine) - statistics.mean(
                    r["test_metric"] for r in manual
                )
                gains.append(f"{t} {100 * gain:+.1f}")
        lines.append(f"  {method}: " + ", ".join(gains))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mr", "trec"])
    parser.add_argument(
        "--methods", nargs="+", default=["manual", "icl", "bbt", "bbtv2", "bbpl", "rlprompt", "icl_search"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--k-shot", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--memory-cap-mb", type=float, default=256)
    parser.add_argument("--chat-template", action="store_true", help="score under the model's chat template")
    parser.add_argument("--cached-only", action="store_true", help="only tabulate the runs already saved")
    parser.add_argument("--verbose", action="store_true", help="print progress after every generation")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "quality"))
    args = parser.parse_args(argv)
    results = asyncio.run(_run_all(args))
    table = _table(results, args)
    print(table)
    (Path(args.results) / f"summary{'-chat' if args.chat_template else ''}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
