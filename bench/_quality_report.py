"""Tables and the budget-curve plot of `bench/quality.py`, from its cached results alone (no model).

The results are a mapping `RunKey -> result JSON` (what `nograd.pipeline.run` returns, plus the bench's `config`
and compact `history`); the functions here only read it, so they run on synthetic results in the tests.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nograd.methods import METHODS  # noqa: E402
from nograd.tasks import get_task  # noqa: E402

#: How a task's metric is named in table headers and plot titles.
METRIC_LABELS = {"accuracy": "acc", "macro_f1": "macro-F1"}


@dataclass(frozen=True)
class RunKey:
    """One run of the bench. `budget` is None for the baselines (manual, icl): they make no calls, so one run
    serves every budget; `racing` is only ever True for a search method."""

    task: str
    method: str
    seed: int
    budget: int | None
    racing: bool = False


def is_search(method: str) -> bool:
    return METHODS[method].is_search


def metric_label(task: str) -> str:
    return METRIC_LABELS.get(get_task(task).metric, get_task(task).metric)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], seeds: int) -> str:
    """Mean ± std x100, noting a partial seed set (the main table's cell)."""
    if not values:
        return "-"
    mean, std = _mean_std(values)
    partial = f" ({len(values)} of {seeds} seeds)" if len(values) < seeds else ""
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}{partial}"


def _fmt_n(values: list[float]) -> str:
    """Mean ± std x100 with the number of seeds (the budget table's cell)."""
    if not values:
        return "-"
    mean, std = _mean_std(values)
    return f"{100 * mean:5.1f} ± {100 * std:4.1f} ({len(values)})"


def runs_of(results: dict, task: str, method: str, budget: int | None, racing: bool, seeds) -> list[dict]:
    """The cached results of one cell, in seed order (baselines ignore `budget` and `racing`)."""
    if not is_search(method):
        budget, racing = None, False
    keys = (RunKey(task, method, seed, budget, racing) for seed in seeds)
    return [results[key] for key in keys if key in results]


def _tests(runs: list[dict]) -> list[float]:
    return [r["test_metric"] for r in runs if r.get("test_metric") is not None]


def _setting(args) -> str:
    return f"{args.model} ({args.dtype}{', chat template' if args.chat_template else ''}), {args.k_shot}-shot"


def main_table(results: dict, initial: dict, args) -> str:
    """Methods x tasks at the first budget, racing off, with each method's gain over the manual prompt.
    `initial` maps a task to BBT's starting point (z = 0) on its test set."""
    budget = args.budgets[0]
    lines = [
        f"{_setting(args)}, seeds {args.seeds}, budget {budget} calls for the searches; test metric x100 (the "
        "metric each column names), mean ± std over seeds",
        "",
    ]
    header = "| method | " + " | ".join(f"{t} ({metric_label(t)})" for t in args.tasks) + " |"
    lines += [header, "|---" * (len(args.tasks) + 1) + "|"]
    rows = {m: {t: _tests(runs_of(results, t, m, budget, False, args.seeds)) for t in args.tasks} for m in args.methods}
    if "bbt" in args.methods:
        rows["bbt z=0"] = {t: [initial[t]["test_metric"]] if t in initial else [] for t in args.tasks}
    for method, cells in rows.items():
        seeds = 1 if method == "bbt z=0" else len(args.seeds)
        lines.append(f"| {method} | " + " | ".join(_fmt(cells[t], seeds) for t in args.tasks) + " |")
    manual = rows.get("manual", {})
    gains = {
        method: [
            f"{t} {100 * (statistics.mean(cells[t]) - statistics.mean(manual[t])):+.1f}"
            for t in args.tasks
            if cells[t] and manual.get(t)
        ]
        for method, cells in rows.items()
        if method != "manual"
    }
    if any(gains.values()):  # none without manual runs to compare with
        lines += ["", "gain over manual (mean test metric difference, x100):"]
        lines += [f"  {method}: " + ", ".join(cells) for method, cells in gains.items() if cells]
    return "\n".join(lines)


def _curve_rows(results: dict, args) -> list[tuple[str, int, bool]]:
    """(method, budget, racing) of every search cell with at least one cached run, in table order, for the methods
    with a curve: cached runs in more than one such cell (a method run at one budget only is the main table's)."""
    cells = [
        (method, budget, racing)
        for method in args.methods
        if is_search(method)
        for budget in args.budgets
        for racing in args.racing_modes
        if any(runs_of(results, t, method, budget, racing, args.seeds) for t in args.tasks)
    ]
    return [cell for cell in cells if sum(c[0] == cell[0] for c in cells) > 1]


def budget_table(results: dict, args) -> str:
    """Rows `method @ budget [racing]` x tasks: mean ± std of the test metric x100 and (n) seeds."""
    lines = [
        f"{_setting(args)}: test metric x100 against the budget, mean ± std over seeds (n: seeds); racing runs' "
        "calls are example-evaluations / training batch size",
        "",
        "| run | " + " | ".join(f"{t} ({metric_label(t)})" for t in args.tasks) + " |",
        "|---" * (len(args.tasks) + 1) + "|",
    ]
    for method, budget, racing in _curve_rows(results, args):
        cells = [_fmt_n(_tests(runs_of(results, t, method, budget, racing, args.seeds))) for t in args.tasks]
        lines.append(f"| {method} @ {budget}{' racing' if racing else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_on(run: dict) -> str:
    """The CPU a run was measured on; runs saved before hosts were recorded were all measured on the AMX Xeon that
    began the v3 bench."""
    machine = run.get("host") or {}
    return machine.get("cuda") or machine.get("cpu") or "unrecorded (AMX Xeon)"


def machines(run: dict) -> set[str]:
    """Where a run's wall time was measured: `measured_on` of each part (a resumed run has several), with the first
    8 characters of the boot id where the host record has one. Two runs' wall times divide only when both were
    measured in one such place: the same CPU model has run the same job 2x apart on two machines. Runs recorded
    without a boot id (before it was recorded) are placed by their CPU alone."""
    parts = [part.get("host") or {} for part in run.get("wall_segments", [])] or [run.get("host") or {}]
    return {
        measured_on({"host": part}) + (f" (boot {part['boot_id'][:8]})" if part.get("boot_id") else "")
        for part in parts
    }


def _compare(raced: list[dict], plain: list[dict]) -> tuple[float, float | str, float, list[int]] | None:
    """Over the seeds both sides have: (example-evaluations ratio, wall-time ratio, test metric difference, seeds).
    Calls count example-evaluations / training batch size on both sides (the same batch for one task and seed), so
    the ratio of calls is the ratio of example evaluations. The wall-time ratio is the mean over seeds of each
    seed's ratio, each measured in one place (`machines`); where a seed's two runs were not, the wall times are not
    divided: the ratio is then a sentence naming the places."""
    by_seed = {r["config"]["seed"]: r for r in plain}
    pairs = [(r, by_seed[r["config"]["seed"]]) for r in raced if r["config"]["seed"] in by_seed]
    pairs = [(a, b) for a, b in pairs if a.get("test_metric") is not None and b.get("test_metric") is not None]
    if not pairs:
        return None
    calls = sum(a["calls"] for a, _ in pairs) / sum(b["calls"] for _, b in pairs)
    if all(len(machines(a)) == 1 and machines(a) == machines(b) for a, b in pairs):
        wall = statistics.mean(a["wall_seconds"] / b["wall_seconds"] for a, b in pairs)
    else:
        places = {m for pair in pairs for run in pair for m in machines(run)}
        wall = f"wall time not compared (measured on {' and '.join(sorted(places))})"
    difference = statistics.mean(a["test_metric"] for a, _ in pairs) - statistics.mean(
        b["test_metric"] for _, b in pairs
    )
    return calls, wall, difference, sorted(a["config"]["seed"] for a, _ in pairs)


def racing_lines(results: dict, args) -> list[str]:
    """Racing against no racing, per search method and task: at the same budget, and each racing budget against
    the largest budget without racing."""
    lines = []
    for method in (m for m in args.methods if is_search(m)):
        for task in args.tasks:
            cell = {
                (b, r): runs_of(results, task, method, b, r, args.seeds) for b in args.budgets for r in (False, True)
            }
            plain = [b for b in args.budgets if cell[b, False]]
            pairs = [(b, b) for b in args.budgets if cell[b, True] and cell[b, False]]
            if plain:
                top = max(plain)
                pairs += [(b, top) for b in args.budgets if cell[b, True] and b < top]
            for raced_at, plain_at in pairs:
                compared = _compare(cell[raced_at, True], cell[plain_at, False])
                if compared is None:
                    continue
                calls, wall, difference, seeds = compared
                lines.append(
                    f"  {method} on {task}: racing@{raced_at} vs off@{plain_at}: {calls:.2f}x the example-evaluations, "
                    f"{wall if isinstance(wall, str) else f'{wall:.2f}x the wall time'}, test {100 * difference:+.1f} "
                    f"(seeds {seeds})"
                )
    return ["racing (from the cached runs):", *lines] if lines else []


def _best_dev_curve(run: dict) -> tuple[list[float], list[float]]:
    """(calls, best dev metric so far) from a run's compact history (empty without one)."""
    points = [(e["calls"], e["best_dev_metric"]) for e in run.get("history", []) if "best_dev_metric" in e]
    return [c for c, _ in points], [m for _, m in points]


def _step_mean(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over runs of step functions (each holds its value until its next point) on the union of their
    calls; a run counts from its first point on."""
    grid = sorted({c for calls, _ in curves for c in calls})
    means, stds = [], []
    for x in grid:
        values = [next(v for c, v in zip(reversed(cs), reversed(vs)) if c <= x) for cs, vs in curves if cs[0] <= x]
        mean, std = _mean_std(values)
        means.append(mean)
        stds.append(std)
    return grid, means, stds


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize="small")


def seed_counts(lines: dict) -> dict:
    """Per plotted line, a label per point saying how many seeds its mean holds ("n=2"), when the points of the
    figure do not all hold the same number; otherwise no labels (an empty dict)."""
    counts = {k: [len(v) for _, v in points] for k, points in lines.items()}
    if len({n for ns in counts.values() for n in ns}) <= 1:
        return {}
    return {k: [f"n={n}" for n in ns] for k, ns in counts.items()}


def plot_budget_curve(results: dict, args, path: Path) -> Path | None:
    """Test metric against calls (one subplot per task; a line per search method with runs at several budgets or
    with racing, racing dashed, mean ± std band over seeds, markers at each budget; the manual prompt dotted) and,
    where runs have histories, the best dev metric so far against calls at the largest budget. Writes `path` (a
    PNG); returns it, or None when matplotlib is missing or nothing is plotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no budget-curve plot: matplotlib is not installed (pip install matplotlib)")
        return None
    methods = [m for m in args.methods if is_search(m)]
    lines = {
        (t, m, r): [(b, _tests(runs_of(results, t, m, b, r, args.seeds))) for b in args.budgets]
        for t in args.tasks
        for m in methods
        for r in args.racing_modes
    }
    lines = {k: [(b, v) for b, v in points if v] for k, points in lines.items()}
    lines = {k: points for k, points in lines.items() if len(points) > 1 or (k[2] and points)}
    tasks = [t for t in args.tasks if any(k[0] == t for k in lines)]
    if not tasks:
        print("no budget-curve plot: no search method has cached runs at more than one budget")
        return None
    counts = seed_counts(lines)
    top = max(args.budgets)
    dev = {
        (t, m, r): [c for c in map(_best_dev_curve, runs_of(results, t, m, top, r, args.seeds)) if c[0]]
        for t, m, r in lines
    }
    dev = {k: curves for k, curves in dev.items() if curves}
    rows = 2 if dev else 1
    figure, axes = plt.subplots(rows, len(tasks), figsize=(4.5 * len(tasks), 3.6 * rows), squeeze=False)
    for column, task in enumerate(tasks):
        ax = axes[0][column]
        manual = _tests(runs_of(results, task, "manual", None, False, args.seeds))
        if manual:
            ax.axhline(100 * statistics.mean(manual), color="grey", linestyle=":", label="manual")
        for (t, method, racing), points in lines.items():
            if t != task:
                continue
            stats = [_mean_std(v) for _, v in points]
            xs, ys = [b for b, _ in points], [100 * m for m, _ in stats]
            style = {"color": f"C{methods.index(method)}", "linestyle": "--" if racing else "-"}
            ax.plot(xs, ys, marker="o", label=f"{method}{' racing' if racing else ''}", **style)
            offset = (4, -10 if racing else 4)  # racing's labels below its points, the plain line's above
            for x, y, n in zip(xs, ys, counts.get((t, method, racing), [])):
                ax.annotate(n, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=style["color"])
            if any(len(v) > 1 for _, v in points):
                spread = [100 * s for _, s in stats]
                low, high = [y - s for y, s in zip(ys, spread)], [y + s for y, s in zip(ys, spread)]
                ax.fill_between(xs, low, high, color=style["color"], alpha=0.15)
        ax.set(title=f"{task} ({metric_label(task)})", xlabel="calls (budget)", ylabel="test metric x100")
        ax.set_xticks(args.budgets)
        _legend(ax)
        if rows == 2:
            ax = axes[1][column]
            for (t, method, racing), curves in dev.items():
                if t != task:
                    continue
                grid, means, stds = _step_mean(curves)
                style = {"color": f"C{methods.index(method)}", "linestyle": "--" if racing else "-"}
                ys = [100 * m for m in means]
                ax.plot(grid, ys, drawstyle="steps-post", label=f"{method}{' racing' if racing else ''}", **style)
                if len(curves) > 1:
                    low = [y - 100 * s for y, s in zip(ys, stds)]
                    high = [y + 100 * s for y, s in zip(ys, stds)]
                    ax.fill_between(grid, low, high, step="post", color=style["color"], alpha=0.15)
            ax.set(title=f"{task}: best dev so far, budget {top}", xlabel="calls", ylabel="dev metric x100")
            _legend(ax)
    plotted = sorted(
        {
            run["config"]["seed"]
            for t, m, r in lines
            for b in args.budgets
            for run in runs_of(results, t, m, b, r, args.seeds)
        }
    )
    seeds = f"seeds {plotted}" if plotted == sorted(args.seeds) else f"seeds {plotted} of {sorted(args.seeds)}"
    if counts:
        seeds += " (n = seeds in a point's mean)"
    figure.suptitle(f"{_setting(args)}, {seeds}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
