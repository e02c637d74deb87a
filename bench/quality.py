"""Test metric of manual, icl, bbt, bbtv2, bbpl, rlprompt and icl_search on bundled tasks with smollm2-135m,
16-shot, several seeds, at one or several budgets, with or without racing.

Usage:
    .venv/bin/python bench/quality.py --tasks mr trec --seeds 0 1 2 --budget 300
    .venv/bin/python bench/quality.py --chat-template ...   # the same runs under the model's chat template
    .venv/bin/python bench/quality.py --tasks mr trec --methods bbt bbpl --budgets 200 600 1000 --racing both \\
        --dtype fp32 --plan                                   # what is left to run, with a time estimate
Each finished run is cached as JSON under --results (rerunning skips it), so the bench can be run in parts and
resumed. Search runs are named {task}-{method}[-chat][-DTYPE][-race]-s{seed}-b{budget}.json (no -DTYPE for bf16);
a search also saves its state after every generation ({name}.json.partial), so a long run stopped midway goes on
from its last generation and ends with the prompt an uninterrupted run gives on the same CPU (its result keeps
each part's wall time and machine under wall_segments);
the baselines (manual, icl) make no calls, so one run per seed serves every budget: {task}-{method}[-chat][-DTYPE]
-s{seed}.json, or an older {...}-s{seed}-b{any}.json. Prints a table of mean +/- std of the test metric at the
smallest budget and each method's gain over the manual prompt; with several budgets or racing, also a table against
the budget, racing against no racing, and a plot (budget_curve[-chat][-DTYPE].png, needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _host import host  # noqa: E402
from _quality_report import (  # noqa: E402
    RunKey,
    budget_table,
    is_search,
    main_table,
    measured_on,
    plot_budget_curve,
    racing_lines,
)

from nograd.clients.local import LocalClient  # noqa: E402
from nograd.config import RunConfig  # noqa: E402
from nograd.engine import build_engine  # noqa: E402
from nograd.engine.models import native_bf16_cpu  # noqa: E402
from nograd.pipeline import ENGINE_DTYPES, resolve_run, run, score, task_spec, to_examples  # noqa: E402
from nograd.search import prompt_spec  # noqa: E402
from nograd.tasks import get_task  # noqa: E402
from service.checkpoints import CheckpointVersionError, dump_checkpoint, load_checkpoint  # noqa: E402

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

DTYPE_HELP = (
    "the model's dtype (default bf16, which the README's tables use). On a CPU without native bf16 (no "
    "AVX512-BF16 or AMX, e.g. an AVX2 machine) fp32 runs about 6x faster; runs in another dtype than bf16 carry it "
    "in their cache names (-fp32), so dtypes never mix"
)

EMULATED = (
    "this CPU has no native bf16 (no AVX512-BF16 or AMX) and there is no CUDA device: bf16 runs here are emulated, "
    "several times slower than the runs the estimates come from (the v3 tables were measured on a CPU with AMX)"
)


def emulated_bf16(args) -> bool:
    """Whether the runs would compute bf16 without hardware support (a CPU without AVX512-BF16/AMX, no CUDA)."""
    return args.dtype == "bf16" and not torch.cuda.is_available() and not native_bf16_cpu()


# ---------------------------------------------------------------- names and the cache
def _suffix(args) -> str:
    """What every cache name of these settings carries: the chat template, and the dtype unless bf16 (the names
    from before dtypes were named)."""
    return ("-chat" if args.chat_template else "") + ("" if args.dtype == "bf16" else f"-{args.dtype}")


def run_name(key: RunKey, args) -> str:
    stem = f"{key.task}-{key.method}{_suffix(args)}{'-race' if key.racing else ''}-s{key.seed}"
    return stem if key.budget is None else f"{stem}-b{key.budget}"


def init_name(task: str, args) -> str:
    """BBT's starting point on `task` (seed- and budget-independent)."""
    return f"{task}-bbt{_suffix(args)}-init"


def cached_path(key: RunKey, args) -> Path | None:
    """Where `key`'s result is saved, or None. A baseline also reuses a run saved under a budget (older caches
    named every run with the budget the bench was given)."""
    out = Path(args.results)
    path = out / f"{run_name(key, args)}.json"
    if path.exists():
        return path
    if key.budget is None:
        older = sorted(out.glob(f"{run_name(key, args)}-b*.json"))
        return older[0] if older else None
    return None


def planned_runs(args) -> list[RunKey]:
    """Every run the arguments ask for, in the order the bench runs them: seeds outermost (an interrupted bench
    has every task and method for the seeds it finished), then budgets from the smallest; each baseline once."""
    keys: list[RunKey] = []
    for seed in args.seeds:
        for budget in args.budgets:
            for task in args.tasks:
                for method in args.methods:
                    if not is_search(method):
                        key = RunKey(task, method, seed, None)
                        keys += [] if key in keys else [key]
                        continue
                    keys += [RunKey(task, method, seed, budget, racing) for racing in args.racing_modes]
    return keys


def load_cached(args) -> tuple[dict[RunKey, dict], dict[str, dict]]:
    """The saved results of the planned runs, and BBT's saved starting points per task."""
    results = {}
    for key in planned_runs(args):
        path = cached_path(key, args)
        if path is not None:
            results[key] = json.loads(path.read_text())
    initial = {}
    for task in args.tasks if "bbt" in args.methods else []:
        path = Path(args.results) / f"{init_name(task, args)}.json"
        if path.exists():
            initial[task] = json.loads(path.read_text())
    return results, initial


# ---------------------------------------------------------------- planning
def _timing_dirs(args) -> list[Path]:
    out = Path(args.results)
    dirs = [Path(d) for d in args.timings] if args.timings else [out, *sorted(out.parent.glob("quality*"))]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def _durations(dirs: list[Path]) -> dict[tuple, list[tuple[float, float, str]]]:
    """(task, method, dtype, chat, racing) -> [(calls, wall seconds, the CPU or GPU it ran on)] of every cached run
    in `dirs`."""
    found: dict[tuple, list[tuple[float, float, str]]] = {}
    for path in (p for d in dirs for p in d.glob("*.json")):
        data = json.loads(path.read_text())
        config = data.get("config")
        if "wall_seconds" not in data or not config:
            continue
        kind = (data["task"], data["method"], config.get("dtype"), config.get("chat_template", False))
        found.setdefault((*kind, bool(config.get("racing", False))), []).append(
            (data["calls"], data["wall_seconds"], measured_on(data))
        )
    return found


def this_machine() -> str:
    """This machine as `measured_on` names a run's: the CUDA device, else the CPU."""
    return measured_on({"host": host()})


def estimate(
    key: RunKey, args, durations: dict, here: str | None = None, done_calls: float = 0.0
) -> tuple[float | None, int, list[str]]:
    """Seconds `key` should take, how many cached runs that comes from (None, 0: no run of the same task, method
    and dtype is cached), and the other machines those runs were measured on (empty: all on `here`). Runs on `here`
    are used where there are any. A search: the manual run's time on the task (the fixed scoring of train, dev and
    test) plus the cached runs' seconds per call times the budget; a racing run without cached racing runs uses
    the non-racing ones. `done_calls`: the calls a stopped run already made (its .json.partial); only the rest count."""

    def pick(samples: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
        return [s for s in samples if s[2] == here] or samples

    kind = (key.task, key.method, args.dtype, args.chat_template)
    manual = pick(durations.get((key.task, "manual", args.dtype, args.chat_template, False), []))
    base = statistics.mean(w for _, w, _ in manual) if manual else 0.0
    if key.method == "bbt z=0":  # one test pass, about a manual run
        return (base, len(manual), _elsewhere(manual, here)) if manual else (None, 0, [])
    samples = pick(durations.get((*kind, key.racing)) or durations.get((*kind, False), []))
    if not samples:
        return None, 0, []
    others = _elsewhere([*samples, *(manual if is_search(key.method) else [])], here)
    if not is_search(key.method):
        return statistics.mean(w for _, w, _ in samples), len(samples), others
    paces = [max(w - base, 0.0) / c for c, w, _ in samples if c > 0]
    left = max(key.budget - done_calls, 0.0)
    return (base + statistics.mean(paces) * left, len(paces), others) if paces else (None, 0, [])


def _elsewhere(samples: list[tuple[float, float, str]], here: str | None) -> list[str]:
    return sorted({machine for _, _, machine in samples if machine != here})


def _partial_calls(path: Path) -> float:
    """The calls a stopped search saved at `path` had made (0: no such file)."""
    if not path.exists():
        return 0.0
    return float(json.loads(path.read_text())["segments"][-1]["calls"])


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plan_text(args) -> str:
    """The planned runs not cached yet, each with an estimate from the cached runs' durations. Loads no model."""
    planned = [(run_name(k, args), k, cached_path(k, args) is not None) for k in planned_runs(args)]
    for task in args.tasks if "bbt" in args.methods else []:
        done = (Path(args.results) / f"{init_name(task, args)}.json").exists()
        planned.append((init_name(task, args), RunKey(task, "bbt z=0", 0, None), done))
    missing = [(name, key) for name, key, done in planned if not done]
    durations = _durations(_timing_dirs(args))
    here = this_machine()
    lines = [f"{len(missing)} runs to do in {args.results} (of {len(planned)} planned):"]
    known, unknown, elsewhere = 0.0, 0, set()
    for name, key in missing:
        done = _partial_calls(Path(args.results) / f"{name}.json.partial")  # 0 for baselines: they save none
        seconds, n, others = estimate(key, args, durations, here, done)
        name = f"{name} (resumes at {done:g} calls)" if done else name
        if seconds is None:
            unknown += 1
            lines.append(f"  {name:<40} unknown (no cached run of this task, method and dtype to go by)")
        else:
            known += seconds
            elsewhere.update(others)
            on = f", measured on {' and '.join(others)}" if others else ""
            lines.append(f"  {name:<40} ~{_minutes(seconds)} (from {n} cached run{'s' if n > 1 else ''}{on})")
    total = f"total: ~{_minutes(known)}" + (f" plus {unknown} runs of unknown duration" if unknown else "")
    if unknown and unknown == len(missing):
        total = "total: unknown (no cached run of the same tasks, methods and dtype yet; run a part, then plan again)"
    lines.append(total + " (timings from: " + ", ".join(map(str, _timing_dirs(args))) + ")")
    if elsewhere:
        lines.append(
            f"note: some estimates come from runs on another machine than this one ({here}); wall times differ "
            "several-fold between CPUs with native bf16 (README: Results)"
        )
    if missing and emulated_bf16(args):
        lines.append(f"warning: {EMULATED}; --dtype fp32 runs about 6x faster (cached under -fp32 names)")
    return "\n".join(lines)


# ---------------------------------------------------------------- running
def _compact(entry: dict) -> dict:
    """A history record small enough to keep with the result: its scalars (not the population's losses) and the
    dev round's metric and best-so-far, flattened. The initial record (generation 0) gives the starting point."""
    if "initial" in entry:
        dev = entry["initial"]["dev_metric"]
        return {"generation": 0, "calls": 0, "dev_metric": dev, "best_dev_metric": dev}
    kept = {k: v for k, v in entry.items() if isinstance(v, (int, float, str, bool)) or v is None}
    if "dev" in entry:
        kept.update(dev_metric=entry["dev"]["metric"], best_dev_metric=entry["dev"]["best_metric"])
    return kept


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (a bench killed mid-write leaves the previous file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_partial(path: Path, config: dict) -> dict | None:
    """The interrupted search saved at `path` (written after every generation), or None if there is none. Exits
    with the fix if it was run with other settings or library versions than this run."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["config"] != config:
        changed = sorted(k for k in config.keys() | saved["config"].keys() if config.get(k) != saved["config"].get(k))
        sys.exit(f"{path}: saved with other settings ({', '.join(changed)}); delete it to start this run again")
    try:
        state = load_checkpoint(saved["checkpoint"], path.name)
    except CheckpointVersionError as error:
        sys.exit(f"{path}: {error}; or delete it to start this run again")
    return {"state": state, "history": saved["history"], "segments": saved["segments"]}


async def _run_one(client: LocalClient, key: RunKey, args) -> dict:
    name = run_name(key, args)
    options = {"budget": key.budget} if is_search(key.method) else {}
    if key.racing:
        options["racing"] = True
    config, data = resolve_run(
        RunConfig(
            task=key.task,
            method=key.method,
            seed=key.seed,
            model=args.model,
            dtype=args.dtype,
            k_shot=args.k_shot,
            memory_cap_mb=args.memory_cap_mb,
            chat_template=args.chat_template,
            **options,
            **METHOD_OPTIONS[key.method],
        )
    )
    partial = Path(args.results) / f"{name}.json.partial"
    settings = json.loads(json.dumps(config.to_dict()))  # as the partial file holds them
    resumed = _load_partial(partial, settings) if is_search(key.method) else None
    history: list[dict] = resumed["history"] if resumed else []
    segments: list[dict] = resumed["segments"] if resumed else []
    machine = host()  # once per run: it reads /proc/cpuinfo
    started = time.perf_counter()
    if resumed:
        print(f"{name}: resumes at {resumed['state']['calls']:g} calls ({partial.name})", flush=True)

    def on_generation(entry: dict) -> None:
        history.append(_compact(entry))
        if args.verbose:
            print(f"  {name}: {entry['calls']:g} calls, {time.perf_counter() - started:.0f} s", flush=True)

    def on_checkpoint(state: dict) -> None:
        here = {"seconds": time.perf_counter() - started, "host": machine, "calls": state["calls"]}
        _write_atomic(
            partial,
            json.dumps(
                {
                    "config": settings,
                    "checkpoint": dump_checkpoint(state),
                    "history": history,
                    "segments": [*segments, here],
                }
            ),
        )

    result = await run(
        config,
        client,
        on_generation=on_generation,
        data=data,
        resume=resumed["state"] if resumed else None,
        on_checkpoint=on_checkpoint if is_search(key.method) else None,
    )
    result["config"] = config.to_dict()
    result["host"] = machine
    if is_search(key.method):
        result["history"] = history
    if segments:  # resumed: the wall time of every part, each part's machine (bf16 rounding follows the CPU)
        result["wall_segments"] = [*segments, {"seconds": result["wall_seconds"], "host": result["host"]}]
        result["wall_seconds"] = sum(part["seconds"] for part in result["wall_segments"])
    _write_atomic(Path(args.results) / f"{name}.json", json.dumps(result, indent=2))
    partial.unlink(missing_ok=True)
    print(
        f"{name}: test {result['test_metric']:.4f} dev {result['dev_metric']:.4f} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return result


async def _initial_prompt(client: LocalClient, name: str, args) -> dict:
    """BBT's starting point (z = 0: the placeholder prompt tokens, no search) on the test set, to show what the
    search itself adds. Seed-independent."""
    task = get_task(name)
    config, _ = resolve_run(
        RunConfig(task=name, method="bbt", model=args.model, chat_template=args.chat_template, **METHOD_OPTIONS["bbt"])
    )
    test = await score(
        client,
        task_spec(task, chat=args.chat_template),
        to_examples(task, task.test),
        prompt_spec(config, config.mode),
        np.zeros(config.dim),
    )
    result = {"test_metric": test["metric"], "test_ce": test["ce"]}
    (Path(args.results) / f"{init_name(name, args)}.json").write_text(json.dumps(result, indent=2))
    return result


async def _run_missing(args) -> None:
    """Run every planned run not cached yet; the engine loads only when one is left."""
    Path(args.results).mkdir(parents=True, exist_ok=True)
    client = None

    def engine() -> LocalClient:
        nonlocal client
        if client is None:
            client = LocalClient(build_engine(args.model, dtype=args.dtype, memory_cap_mb=args.memory_cap_mb))
        return client

    for key in planned_runs(args):
        if cached_path(key, args) is None:
            await _run_one(engine(), key, args)
    for task in args.tasks if "bbt" in args.methods else []:
        if not (Path(args.results) / f"{init_name(task, args)}.json").exists():
            await _initial_prompt(engine(), task, args)


def report(args) -> str:
    """The tables of the cached runs; with several budgets or racing, also the budget curve, racing against no
    racing, and the plot."""
    results, initial = load_cached(args)
    parts = [main_table(results, initial, args)]
    if len(args.budgets) > 1 or True in args.racing_modes:
        parts += ["", budget_table(results, args)]
        racing = racing_lines(results, args)
        parts += ["", *racing] if racing else []
        png = plot_budget_curve(results, args, Path(args.results) / f"budget_curve{_suffix(args)}.png")
        parts += ["", f"plot: {png}"] if png else []
    return "\n".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mr", "trec"])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHOD_OPTIONS),
        default=["manual", "icl", "bbt", "bbtv2", "bbpl", "rlprompt", "icl_search"],
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", type=int, help="the searches' budgets in calls (default 300)")
    parser.add_argument("--budget", type=int, help="one budget (the same as --budgets N)")
    parser.add_argument(
        "--racing",
        choices=["off", "on", "both"],
        default="off",
        help="run the searches without racing, with it (RunConfig.racing; cache names gain -race), or both",
    )
    parser.add_argument("--k-shot", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", choices=ENGINE_DTYPES, default="bf16", help=DTYPE_HELP)
    parser.add_argument("--memory-cap-mb", type=float, default=256)
    parser.add_argument("--chat-template", action="store_true", help="score under the model's chat template")
    parser.add_argument("--cached-only", action="store_true", help="only tabulate the runs already saved")
    parser.add_argument(
        "--plan", action="store_true", help="list the runs not cached yet with a time estimate; run nothing"
    )
    parser.add_argument(
        "--timings",
        nargs="+",
        help="folders of cached runs whose durations --plan estimates from (default: --results and the quality* "
        "folders beside it)",
    )
    parser.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="run bf16 even on a CPU that emulates it (without this, such a run is refused: it takes hours)",
    )
    parser.add_argument("--verbose", action="store_true", help="print progress after every generation")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "quality"))
    args = parser.parse_args(argv)
    if args.budgets and args.budget is not None:
        parser.error("give --budgets or --budget, not both")
    args.budgets = sorted(set(args.budgets or [args.budget or 300]))
    args.racing_modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.racing]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(plan_text(args))
        return 0
    if not args.cached_only:
        missing = [k for k in planned_runs(args) if cached_path(k, args) is None]
        if missing and emulated_bf16(args) and not args.emulated_bf16:
            print(
                f"quality.py: error: {len(missing)} runs to do, and {EMULATED}. Run them with --dtype fp32 (cached "
                "under -fp32 names, tabulated apart), on a machine with native bf16, or pass --emulated-bf16 to "
                "run them here anyway",
                file=sys.stderr,
            )
            return 2
        asyncio.run(_run_missing(args))
    text = report(args)
    print(text)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / f"summary{_suffix(args)}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
