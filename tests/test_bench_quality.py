"""bench/quality.py without a model: its tables, racing comparison and plot on synthetic cached results, its plan
of what is left to run (which must not build an engine), and one end-to-end pass on the fake engine."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest

from nograd.config import RunConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def quality(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("quality")


def _result(task: str, method: str, seed: int, budget: int | None, racing: bool = False) -> dict:
    """A cached run: off-racing test metric 0.70 + budget / 10,000 + seed / 100; racing two points higher at 0.9x
    the calls and half the wall time; baselines 0.60 + seed / 100."""
    if budget is None:
        test, calls, wall = 0.60 + seed / 100, 0, 20.0
    else:
        test, calls, wall = 0.70 + budget / 10_000 + seed / 100, budget, budget * 0.1 + 10
        if racing:
            test, calls, wall = test + 0.02, 0.9 * budget, wall / 2
    history = (
        []
        if budget is None
        else [
            {"generation": 0, "calls": 0, "best_dev_metric": 0.5},
            {"generation": 5, "calls": calls / 2, "best_dev_metric": 0.6 + seed / 100},
            {"generation": 10, "calls": calls, "best_dev_metric": 0.7},
        ]
    )
    config = {"task": task, "method": method, "seed": seed, "dtype": "fp32", "chat_template": False}
    return {
        "method": method,
        "task": task,
        "test_metric": test,
        "dev_metric": 0.7,
        "calls": calls,
        "budget": budget or 0,
        "wall_seconds": wall,
        "config": {**config, **({"racing": True} if racing else {})},
        **({"history": history} if history else {}),
    }


def _write(quality, args, key) -> None:
    path = Path(args.results) / f"{quality.run_name(key, args)}.json"
    path.write_text(json.dumps(_result(key.task, key.method, key.seed, key.budget, key.racing)))


CURVE = ["--tasks", "mr", "sms", "--methods", "manual", "bbt", "bbpl", "bbtv2", "--seeds", "0", "1", "2"]
CURVE += ["--budgets", "200", "600", "1000", "--racing", "both", "--dtype", "fp32", "--cached-only"]


@pytest.fixture
def cached(quality, tmp_path):
    """Every planned run of CURVE cached, except: bbpl on sms has seed 0 only, bbpl never races, and bbtv2 runs at
    budget 200 only, without racing."""
    args = quality.parse_args([*CURVE, "--results", str(tmp_path)])
    for key in quality.planned_runs(args):
        left_out = key.method == "bbpl" and (key.racing or (key.task == "sms" and key.seed > 0))
        left_out |= key.method == "bbtv2" and (key.racing or key.budget != 200)
        if not left_out:
            _write(quality, args, key)
    for task in ("mr", "sms"):
        (tmp_path / f"{quality.init_name(task, args)}.json").write_text(json.dumps({"test_metric": 0.5}))
    return args


def test_the_tables_hold_the_cached_results(quality, cached, capsys):
    assert quality.main([*CURVE, "--results", cached.results]) == 0
    summary = (Path(cached.results) / "summary-fp32.md").read_text()
    # stdout is the summary, after the plot's line (a hint where matplotlib is missing)
    assert capsys.readouterr().out.strip().endswith(summary.strip())
    main, curve = summary.split("| run |")
    assert "| method | mr (acc) | sms (macro-F1) |" in main and "budget 200 calls" in main
    # The main table is at the smallest budget, without racing: bbt 0.72, 0.73, 0.74.
    assert "| bbt |  73.0 ±  1.0 |  73.0 ±  1.0 |" in main
    assert "| manual |  61.0 ±  1.0 |  61.0 ±  1.0 |" in main
    assert "| bbpl |  73.0 ±  1.0 |  72.0 ±  0.0 (1 of 3 seeds) |" in main
    assert "| bbt z=0 |  50.0 ±  0.0 |  50.0 ±  0.0 |" in main
    assert "bbt: mr +12.0, sms +12.0" in main
    assert "| bbt @ 1000 |  81.0 ±  1.0 (3) |  81.0 ±  1.0 (3) |" in curve
    assert "| bbt @ 600 racing |  79.0 ±  1.0 (3) |  79.0 ±  1.0 (3) |" in curve
    assert "| bbpl @ 600 |  77.0 ±  1.0 (3) |  76.0 ±  0.0 (1) |" in curve
    assert "bbpl @ 600 racing" not in curve  # no cached run, no row
    assert "| bbtv2 |  73.0 ±  1.0 |  73.0 ±  1.0 |" in main and "bbtv2 @" not in curve  # one budget: no curve
    # Racing at the same budget: 0.9x the calls, half the wall time, two points up; racing at 600 against no racing
    # at 1000: 540 / 1000 calls, 35 / 110 s, 0.79 against 0.81.
    assert "bbt on mr: racing@1000 vs off@1000: 0.90x the example-evaluations, 0.50x the wall time, test +2.0" in curve
    assert "bbt on sms: racing@600 vs off@1000: 0.54x the example-evaluations, 0.32x the wall time, test -2.0" in curve
    assert "racing@200 vs off@200" in curve and "bbpl on" not in curve


def _place(quality, args, key, **host) -> None:
    """Record where a cached run of `key` was measured: its host, or with `segments`, one host per resumed part."""
    path = Path(args.results) / f"{quality.run_name(key, args)}.json"
    run = json.loads(path.read_text())
    if "segments" in host:
        run["wall_segments"] = [{"seconds": run["wall_seconds"] / 2, "host": h} for h in host["segments"]]
    else:
        run["host"] = host
    path.write_text(json.dumps(run))


EPYC = {"cpu": "AMD EPYC", "native_bf16": True, "threads": 2, "cuda": None}


def _curve(quality, args, capsys) -> str:
    """What the bench prints from the curve table on: the table, then racing against no racing."""
    assert quality.main([*CURVE, "--results", args.results]) == 0
    return capsys.readouterr().out.split("| run |")[1]


def test_wall_times_from_different_cpus_are_not_divided(quality, cached, capsys):
    """Racing at 1000 on mr measured on another CPU than the run without racing: calls and test metrics are still
    compared, the wall times are not."""
    _place(quality, cached, quality.RunKey("mr", "bbt", 0, 1000, True), **EPYC)
    curve = _curve(quality, cached, capsys)
    assert (
        "bbt on mr: racing@1000 vs off@1000: 0.90x the example-evaluations, wall time not compared (measured on "
        "AMD EPYC and unrecorded (AMX Xeon)), test +2.0 (seeds [0, 1, 2])" in curve
    )
    assert "bbt on sms: racing@1000 vs off@1000: 0.90x the example-evaluations, 0.50x the wall time" in curve


def test_wall_times_from_two_boots_of_one_cpu_model_are_not_divided(quality, cached, capsys):
    """Two machines with the same CPU model ran the same job 2x apart, so a seed's two runs divide only when they
    ran in one boot; each seed's ratio is measured in its own place, and the ratios are averaged over seeds."""
    racing, plain = (quality.RunKey("mr", "bbt", 0, 1000, r) for r in (True, False))
    _place(quality, cached, racing, **EPYC, boot_id="aaaaaaaa-1111")
    _place(quality, cached, plain, **EPYC, boot_id="bbbbbbbb-2222")
    for seed, boot in ((1, "cccccccc-3333"), (2, "dddddddd-4444")):  # each seed's pair in one boot of its own
        for r in (True, False):
            _place(quality, cached, quality.RunKey("sms", "bbt", seed, 1000, r), **EPYC, boot_id=boot)
    # a resumed run measured in two boots is not divided by a run measured in one of them
    key = quality.RunKey("sms", "bbt", 0, 600, True)
    _place(quality, cached, key, segments=[{**EPYC, "boot_id": "cccccccc-3333"}, {**EPYC, "boot_id": "eeeeeeee"}])
    _place(quality, cached, quality.RunKey("sms", "bbt", 0, 600, False), **EPYC, boot_id="cccccccc-3333")
    curve = _curve(quality, cached, capsys)
    assert (
        "bbt on mr: racing@1000 vs off@1000: 0.90x the example-evaluations, wall time not compared (measured on "
        "AMD EPYC (boot aaaaaaaa) and AMD EPYC (boot bbbbbbbb) and unrecorded (AMX Xeon)), test +2.0" in curve
    )
    assert "bbt on sms: racing@1000 vs off@1000: 0.90x the example-evaluations, 0.50x the wall time" in curve
    assert (
        "bbt on sms: racing@600 vs off@600: 0.90x the example-evaluations, wall time not compared (measured on "
        "AMD EPYC (boot cccccccc) and AMD EPYC (boot eeeeeeee) and unrecorded (AMX Xeon))" in curve
    )


def test_the_plot_is_written(quality, cached):
    pytest.importorskip("matplotlib")
    path = Path(cached.results) / "curve.png"
    results, _ = quality.load_cached(cached)
    assert quality.plot_budget_curve(results, cached, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_plot_labels_points_with_their_seed_count_only_when_counts_differ(quality):
    """A point's mean over 3 seeds next to one over 1 would read as one curve; each point then says its n."""
    seed_counts = importlib.import_module("_quality_report").seed_counts  # the bench's folder is on the path
    even = {("mr", "bbt", False): [(200, [0.7, 0.8]), (600, [0.8, 0.9])], ("mr", "bbt", True): [(200, [0.7, 0.7])]}
    assert seed_counts(even) == {}
    uneven = {**even, ("mr", "bbt", True): [(200, [0.7, 0.7, 0.8]), (1000, [0.9])]}
    assert seed_counts(uneven) == {
        ("mr", "bbt", False): ["n=2", "n=2"],
        ("mr", "bbt", True): ["n=3", "n=1"],
    }


def test_without_matplotlib_the_plot_is_a_hint(quality, cached, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    results, _ = quality.load_cached(cached)
    assert quality.plot_budget_curve(results, cached, Path(cached.results) / "curve.png") is None
    assert "pip install matplotlib" in capsys.readouterr().out
    assert not (Path(cached.results) / "curve.png").exists()


def _no_engine(*args, **kwargs):
    raise AssertionError("planning built an engine")


def test_the_plan_lists_what_is_left_without_loading_a_model(quality, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "build_engine", _no_engine)
    monkeypatch.setattr(quality, "this_machine", lambda: "Test CPU")
    out = tmp_path / "quality-fp32"
    argv = ["--tasks", "mr", "sms", "--methods", "manual", "bbt", "--seeds", "0", "1", "--budgets", "200", "600"]
    argv += ["--racing", "both", "--dtype", "fp32", "--results", str(out), "--plan"]
    assert quality.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # 2 seeds x 2 tasks x (manual once + bbt at 2 budgets, with and without racing), and BBT's z = 0 per task.
    assert lines[0].startswith("22 runs to do")
    names = [line.split()[0] for line in lines[1:-1]]
    assert names[:6] == [
        "mr-manual-fp32-s0",
        "mr-bbt-fp32-s0-b200",
        "mr-bbt-fp32-race-s0-b200",
        "sms-manual-fp32-s0",
        "sms-bbt-fp32-s0-b200",
        "sms-bbt-fp32-race-s0-b200",
    ]
    assert names[-2:] == ["mr-bbt-fp32-init", "sms-bbt-fp32-init"] and len(names) == 22
    assert all("unknown" in line for line in lines[1:-1]) and lines[-1].startswith("total: unknown")
    assert not out.exists()

    # With a manual run (30 s) and a bbt run (200 calls in 230 s) cached: 1 s per call beyond the manual run's time.
    out.mkdir()
    for name, calls, wall, method in [
        ("mr-manual-fp32-s0", 0, 30.0, "manual"),
        ("mr-bbt-fp32-s0-b200", 200, 230.0, "bbt"),
    ]:
        _cache(out / f"{name}.json", "mr", method, calls, wall, "Test CPU")
    assert quality.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = {line.split()[0]: line for line in lines[1:-1]}
    assert lines[0].startswith("20 runs to do") and len(plan) == 20 and "mr-manual-fp32-s0" not in plan
    # mr: 30 + 3 x 230 + 4 x 630 + 30 (z = 0, about a manual run) s; sms: nothing to go by.
    assert lines[-1].startswith("total: ~54.5 min plus 11 runs of unknown duration")
    assert "~0.5 min (from 1 cached run)" in plan["mr-manual-fp32-s1"]
    assert "~10.5 min" in plan["mr-bbt-fp32-s1-b600"]
    assert "~10.5 min" in plan["mr-bbt-fp32-race-s0-b600"]  # no racing run cached: the plain runs' pace
    assert "~0.5 min" in plan["mr-bbt-fp32-init"] and "unknown" in plan["sms-bbt-fp32-s0-b200"]

    # Runs from another machine: on mr they are ignored (this machine has its own); sms has only those, so its
    # estimates come from them (2.15 s per call) and say where they were measured.
    _cache(out / "other" / "mr-bbt-fp32-s1-b200.json", "mr", "bbt", 200, 1030.0, "Other CPU")
    _cache(out / "other" / "sms-bbt-fp32-s1-b200.json", "sms", "bbt", 200, 430.0, "Other CPU")
    assert quality.main([*argv, "--timings", str(out), str(out / "other")]) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = {line.split()[0]: line for line in lines[1:-2]}
    assert "~10.5 min (from 1 cached run)" in plan["mr-bbt-fp32-s1-b600"]
    assert "~21.5 min (from 1 cached run, measured on Other CPU)" in plan["sms-bbt-fp32-s0-b600"]
    assert lines[-1].startswith("note: some estimates come from runs on another machine than this one (Test CPU)")


def _cache(path: Path, task: str, method: str, calls: int, wall: float, cpu: str) -> None:
    """A cached run as the plan reads it: its calls and wall time, measured on `cpu`."""
    path.parent.mkdir(exist_ok=True)
    config = {"dtype": "fp32", "chat_template": False, "seed": 0}
    result = {"task": task, "method": method, "calls": calls, "wall_seconds": wall, "config": config}
    path.write_text(json.dumps({**result, "host": {"cpu": cpu, "native_bf16": False, "threads": 2, "cuda": None}}))


def test_baselines_reuse_older_caches_named_with_a_budget(quality, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "build_engine", _no_engine)
    (tmp_path / "mr-manual-s0-b200.json").write_text(json.dumps(_result("mr", "manual", 0, None)))
    (tmp_path / "mr-manual-fp32-s1-b200.json").write_text(json.dumps(_result("mr", "manual", 1, None)))
    argv = ["--tasks", "mr", "--methods", "manual", "--seeds", "0", "1", "--budgets", "600", "1000"]
    quality.main([*argv, "--results", str(tmp_path), "--plan"])
    plan = capsys.readouterr().out
    assert plan.startswith("1 runs to do") and "mr-manual-s1 " in plan  # bf16: the fp32 run is not reused
    quality.main([*argv, "--results", str(tmp_path), "--cached-only"])
    assert "| manual |  60.0 ±  0.0 (1 of 2 seeds) |" in capsys.readouterr().out


def test_bf16_runs_on_a_cpu_that_emulates_it_are_refused_unless_asked_for(quality, tmp_path, monkeypatch, capsys):
    # bf16 without AVX512-BF16/AMX runs hours; the v3 tables are bf16 from a CPU with AMX.
    monkeypatch.setattr(quality, "build_engine", _no_engine)
    monkeypatch.setattr(quality, "native_bf16_cpu", lambda: False)
    argv = ["--tasks", "mr", "--methods", "manual", "--seeds", "0", "--results", str(tmp_path)]
    assert quality.main(argv) == 2
    err = capsys.readouterr().err
    assert "1 runs to do" in err and "no native bf16" in err and "--dtype fp32" in err and "--emulated-bf16" in err
    assert quality.main([*argv, "--plan"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("warning: this CPU has no native bf16")
    with pytest.raises(AssertionError, match="built an engine"):  # asked for: it goes on to build the engine
        quality.main([*argv, "--emulated-bf16"])
    (tmp_path / "mr-manual-s0.json").write_text(json.dumps(_result("mr", "manual", 0, None)))
    assert quality.main(argv) == 0  # nothing left to run: the tables, whatever the CPU
    monkeypatch.setattr(quality, "native_bf16_cpu", lambda: True)
    assert quality.main([*argv, "--tasks", "trec", "--plan"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_budget_and_budgets_are_one_option(quality, capsys):
    assert quality.parse_args(["--budget", "200"]).budgets == [200]
    assert quality.parse_args(["--budgets", "1000", "200", "600"]).budgets == [200, 600, 1000]
    assert quality.parse_args([]).budgets == [300]
    with pytest.raises(SystemExit):
        quality.parse_args(["--budget", "200", "--budgets", "600"])
    assert "not both" in capsys.readouterr().err


RACING = [False] + (
    [True]
    if "racing" in {f.name for f in dataclasses.fields(RunConfig)}
    else [pytest.param(True, marks=pytest.mark.skip(reason="RunConfig has no racing option yet"))]
)


@pytest.mark.parametrize("racing", RACING, ids=["plain", "racing"])
def test_runs_end_to_end_on_the_fake_engine(quality, tmp_path, capsys, racing):
    argv = ["--model", "fake", "--tasks", "sms", "--methods", "manual", "bbt", "--seeds", "0", "--k-shot", "4"]
    argv += ["--budgets", "40", "80", "--dtype", "fp32", "--results", str(tmp_path)]
    argv += ["--racing", "on"] if racing else []
    assert quality.main(argv) == 0
    race = "-race" if racing else ""
    bbt = json.loads((tmp_path / f"sms-bbt-fp32{race}-s0-b80.json").read_text())
    assert bbt["config"]["dtype"] == "fp32" and bbt["config"].get("racing", False) is racing
    # wall times compare only on one kind of machine, in one boot
    assert set(bbt["host"]) == {"cpu", "native_bf16", "threads", "cuda", "boot_id"}
    assert bbt["history"][0] == {
        "generation": 0,
        "calls": 0,
        **dict.fromkeys(("dev_metric", "best_dev_metric"), bbt["initial"]["dev_metric"]),
    }
    assert bbt["history"][-1]["calls"] == bbt["calls"] and "losses" not in bbt["history"][-1]
    assert max(e["best_dev_metric"] for e in bbt["history"] if "best_dev_metric" in e) == bbt["dev_metric"]
    assert (tmp_path / "sms-manual-fp32-s0.json").exists() and (tmp_path / "sms-bbt-fp32-init.json").exists()
    assert f"| bbt @ 80{' racing' if racing else ''} |" in capsys.readouterr().out
    quality.main([*argv, "--plan"])
    assert capsys.readouterr().out.startswith("0 runs to do")


class _Stop(Exception):
    """The bench killed after some generations."""


@pytest.mark.parametrize("method", ["bbt", "bbpl"])
def test_a_stopped_search_resumes_from_its_last_generation_and_ends_as_an_uninterrupted_one(
    quality, tmp_path, monkeypatch, capsys, method
):
    argv = ["--model", "fake", "--tasks", "sms", "--methods", method, "--seeds", "0", "--k-shot", "4"]
    argv += ["--budgets", "120", "--racing", "on", "--dtype", "fp32"]
    name = f"sms-{method}-fp32-race-s0-b120"
    assert quality.main([*argv, "--results", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / f"{name}.json").read_text())
    assert not (tmp_path / "whole" / f"{name}.json.partial").exists() and "wall_segments" not in whole

    parts = tmp_path / "parts"
    real_run, checkpoints = quality.run, []

    async def stopped_run(*args, on_checkpoint, **kwargs):
        def stop_after_three(state):
            on_checkpoint(state)
            checkpoints.append(state["calls"])
            if len(checkpoints) == 3:
                raise _Stop

        return await real_run(*args, on_checkpoint=stop_after_three, **kwargs)

    monkeypatch.setattr(quality, "run", stopped_run)
    with pytest.raises(_Stop):
        quality.main([*argv, "--results", str(parts)])
    partial = json.loads((parts / f"{name}.json.partial").read_text())
    assert not (parts / f"{name}.json").exists()
    assert [s["calls"] for s in partial["segments"]] == [checkpoints[-1]] and 0 < checkpoints[-1] < 120
    assert partial["history"][-1]["calls"] == checkpoints[-1]
    capsys.readouterr()
    quality.main([*argv, "--results", str(parts), "--plan", "--timings", str(tmp_path / "whole")])
    assert f"{name} (resumes at {checkpoints[-1]:g} calls)" in capsys.readouterr().out

    monkeypatch.setattr(quality, "run", real_run)
    assert quality.main([*argv, "--results", str(parts)]) == 0
    resumed = json.loads((parts / f"{name}.json").read_text())
    assert not (parts / f"{name}.json.partial").exists()
    same = ("test_metric", "test_ce", "dev_metric", "train_metric", "calls", "prompt_text", "selected_at_calls")
    assert {k: resumed.get(k) for k in same} == {k: whole.get(k) for k in same}
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed["history"]] == [
        {k: v for k, v in e.items() if k != "seconds"} for e in whole["history"]
    ]
    parts_seconds = [s["seconds"] for s in resumed["wall_segments"]]
    assert len(parts_seconds) == 2 and resumed["wall_seconds"] == pytest.approx(sum(parts_seconds))
    assert all(set(s["host"]) == {"cpu", "native_bf16", "threads", "cuda", "boot_id"} for s in resumed["wall_segments"])


def test_a_partial_run_saved_with_other_settings_is_not_resumed(quality, tmp_path):
    argv = ["--model", "fake", "--tasks", "sms", "--methods", "bbt", "--seeds", "0", "--k-shot", "4"]
    argv += ["--budgets", "40", "--dtype", "fp32", "--results", str(tmp_path)]
    config = {"task": "sms", "method": "bbt", "seed": 0, "popsize": 99}
    (tmp_path / "sms-bbt-fp32-s0-b40.json.partial").write_text(json.dumps({"config": config, "checkpoint": "{}"}))
    with pytest.raises(SystemExit, match="saved with other settings .*popsize.*delete it"):
        quality.main(argv)
