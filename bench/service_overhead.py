"""What the service path costs over running the same job in-process, measured side by side in one run.

The same job (bbt on mr, same seed, budget, popsize, dim, dev_every) runs
- direct : `nograd.pipeline.run(config, LocalClient(engine))` in this process;
- service: submitted with `nograd.client.Client` to `nograd serve` (SQLite store, Redis queue, no embedded
  worker) and evaluated by one separate `nograd worker` process; waited for until it succeeded.
Both paths do the same work: the search, then `finalize` (train score and test-set scoring, 1000 mr examples in
chunks of 256). Engines: the real model (smollm2-135m, bf16, memory cap 256 MB in both paths: the worker CLI's
default) and the fixed-latency fake engine (`fake:0.05`: every evaluate call sleeps 50 ms).

Wall time
- direct: `run()` timed in this process (model already loaded);
- service: the job's `finished_at - created_at` (server clock: submit accepted -> job succeeded; includes the
  runner's claim poll, task preparation, per-generation SQLite checkpoints, every queue round trip, and the
  finalize). The runner's own `result.wall_seconds` (claim -> finished) is printed too.
Ratio = service / direct (goal <= 1.05 with the real model). Model loading is outside both timings. Repeats
alternate which path goes first; with the fake engine one uncounted warm-up pair runs first (the first job after
startup pays one-time costs: lazy imports, connections, first CMA step), with the real model none by default
(`--real-warmup`): there both paths start cold (fresh model in this process and in the worker).

Time outside model evaluation, per job: wall - time evaluating, where time evaluating is, direct, the summed wall
time of `LocalClient.evaluate` calls and, service, the worker's `busy_seconds` increase over the job (from its
heartbeats via GET /v1/workers: per batch from take to result written, incl. decode/encode). The difference is
what the service adds regardless of how fast the model happened to run (on a shared 2-core box the compute
itself varies by more than the overhead); "ratio with equal compute" = 1 + that difference / direct wall.

Queue round-trip overhead per generation, two independent measures:
1. overhead = roundtrip_seconds (history: the runner's wait on the queue for that generation's evaluations:
   encode, submit, delivery, result, decode) - compute, where compute = the engine's own `seconds` of every batch
   of that generation. Those come from the workers' results in Redis (`<namespace>:res:<job>` hash, polled by this
   bench while the job runs; each result carries the engine time and `finished_at`, and is assigned to the
   generation whose history window (previous entry's `time`, this entry's `time`] contains it). The part of it the
   worker spends outside the engine (context fetch, decode, encode) is shown separately.
2. per-generation step time, service history `seconds` - direct `on_generation` `seconds`, paired by generation
   (same candidates, so the same compute and ask/tell work in both paths).
Percentiles are over all generations of all repeats (n is printed; with few generations p99 ~ the max).

Agreement: calls == budget on both paths, and best dev metric, test metric and every generation's losses equal.

Usage:
    .venv/bin/python bench/service_overhead.py                       # both engines (real model: a few minutes)
    .venv/bin/python bench/service_overhead.py --engines fake --repeats 3
    .venv/bin/python bench/service_overhead.py --engines real --real-budget 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import redis  # noqa: E402
from _stack import ROOT, Stack, Tee, percentile  # noqa: E402

from nograd.clients.local import LocalClient  # noqa: E402
from nograd.config import RunConfig  # noqa: E402
from nograd.engine import build_engine  # noqa: E402
from nograd.pipeline import resolve_run, run  # noqa: E402
from nograd.sdk import Client  # noqa: E402

REAL_MODEL = "smollm2-135m"


class ResultCollector:
    """Polls a job's result hash in Redis (the workers' BatchResults) until stopped; keeps every result seen.
    The runner deletes the hash when the job finishes, so it must be read while the job runs."""

    def __init__(self, redis_url: str, job_id: str, interval: float, namespace: str = "nograd"):
        self.client = redis.Redis.from_url(redis_url)
        self.key, self.interval = f"{namespace}:res:{job_id}", interval
        self.results: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> ResultCollector:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            for batch_id, value in self.client.hgetall(self.key).items():
                if batch_id not in self.results:
                    self.results[batch_id] = json.loads(value)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


class TimedClient:
    """LocalClient with the wall time of every evaluate summed (what the worker's busy_seconds is on the service
    path: the time spent evaluating, as seen by whoever runs the engine)."""

    def __init__(self, inner: LocalClient):
        self.inner, self.evaluating, self.evaluations = inner, 0.0, 0

    async def evaluate(self, request):
        started = time.perf_counter()
        try:
            return await self.inner.evaluate(request)
        finally:
            self.evaluating += time.perf_counter() - started
            self.evaluations += 1

    async def describe(self):
        return await self.inner.describe()

    async def materialize(self, spec, x):
        return await self.inner.materialize(spec, x)

    async def nearest_tokens(self, spec, x, k):
        return await self.inner.nearest_tokens(spec, x, k)

    async def aclose(self):
        await self.inner.aclose()

    @property
    def usage(self):
        return self.inner.usage


def job_body(args, model: str, budget: int) -> dict:
    return {
        "method": "bbt",
        "task": args.task,
        "model": model,
        "budget": budget,
        "seed": args.seed,
        "dev_every": args.dev_every,
        "options": {"dim": args.dim, "popsize": args.popsize},
    }


def run_direct(local: LocalClient, model: str, budget: int, args) -> dict:
    client = TimedClient(local)
    config, data = resolve_run(
        RunConfig(
            method="bbt",
            task=args.task,
            model=model,
            budget=budget,
            seed=args.seed,
            dev_every=args.dev_every,
            dim=args.dim,
            popsize=args.popsize,
        )
    )
    entries: list[dict] = []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = asyncio.run(run(config, client, on_generation=entries.append, data=data))
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "result": result,
        "history": [e for e in entries if e["generation"] >= 1],
        "load": load,
        "evaluating": client.evaluating,
        "evaluations": client.evaluations,
    }


def run_service(stack: Stack, model: str, budget: int, args, poll: float) -> dict:
    load = os.getloadavg()[0]
    before = {w["id"]: (w["busy_seconds"], w["batches_done"]) for w in stack.live_workers()}
    with Client(stack.url, stack.api_key) as api:
        job = api.submit(**job_body(args, model, budget))
        collector = ResultCollector(stack.redis.url, job["id"], interval=poll).start()
        try:
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(poll if model != REAL_MODEL else 0.5)
                job = api.job(job["id"])
        finally:
            collector.stop()
        if job["status"] != "succeeded":
            raise RuntimeError(f"service job {job['id']} {job['status']}: {job.get('error')}\n{stack.log_tail()}")
        history = api.history(job["id"])
    time.sleep(1.5)  # > 2 heartbeats: the workers' busy_seconds include this job's last batch
    after = {w["id"]: (w["busy_seconds"], w["batches_done"]) for w in stack.live_workers()}
    evaluating = sum(a[0] - before.get(i, (0.0, 0))[0] for i, a in after.items())
    evaluations = sum(a[1] - before.get(i, (0.0, 0))[1] for i, a in after.items())
    gens = [e for e in history if e["generation"] >= 1]
    windows = [(prev["time"], e["time"]) for prev, e in zip(history, history[1:])]
    per_gen = []
    results = list(collector.results.values())
    for (lo, hi), entry in zip(windows, gens):
        mine = [r for r in results if lo < r["finished_at"] <= hi]
        compute = sum(r["data"]["seconds"] for r in mine if r["ok"])
        worker = sum(r["seconds"] for r in mine)
        per_gen.append(
            {
                "generation": entry["generation"],
                "batches": len(mine),
                "compute": compute,
                "worker": worker,
                "roundtrip": entry["roundtrip_seconds"],
            }
        )
    return {
        "wall": job["finished_at"] - job["created_at"],
        "runner_wall": job["result"]["wall_seconds"],
        "result": job["result"],
        "history": gens,
        "per_gen": per_gen,
        "load": load,
        "job": job,
        "evaluating": evaluating,
        "evaluations": evaluations,
    }


def compare(direct: dict, service: dict, budget: int) -> dict:
    d, s = direct["result"], service["result"]
    loss_diff = 0.0
    for a, b in zip(direct["history"], service["history"]):
        loss_diff = max(loss_diff, float(np.max(np.abs(np.asarray(a["losses"]) - np.asarray(b["losses"])))))
    same_gens = len(direct["history"]) == len(service["history"])
    return {
        "calls": (d["calls"], s["calls"]),
        "calls_ok": d["calls"] == s["calls"] == budget,
        "dev": (d["dev_metric"], s["dev_metric"]),
        "test": (d["test_metric"], s["test_metric"]),
        "loss_diff": loss_diff,
        "agree": same_gens
        and d["dev_metric"] == s["dev_metric"]
        and d["test_metric"] == s["test_metric"]
        and loss_diff == 0.0
        and d["calls"] == s["calls"] == budget,
    }


def bench_engine(kind: str, args, out: Tee) -> dict:
    if kind == "real":
        model, budget, repeats, poll = REAL_MODEL, args.real_budget, args.real_repeats, 0.2
        warmup = args.real_warmup
        client = LocalClient(build_engine(REAL_MODEL, dtype="bf16", memory_cap_mb=args.memory_cap_mb))
        worker_args = ("--dtype", "bf16", "--memory-cap-mb", str(args.memory_cap_mb))
    else:
        model, budget, repeats, poll = args.fake_model, args.fake_budget, args.repeats, 0.02
        warmup = args.warmup
        client = LocalClient(build_engine(model))
        worker_args = ()
    out(
        f"\n== {model}: budget {budget}, popsize {args.popsize}, dim {args.dim}, dev_every {args.dev_every}, "
        f"task {args.task}, seed {args.seed}, {repeats} repeat(s) after {warmup} uncounted warm-up pair(s) =="
    )
    stack = Stack(model, workers=1, redis_persistent=args.redis_persistent, worker_args=worker_args)
    pairs = []
    try:
        stack.start(worker_timeout=600)
        for i in range(-warmup, repeats):
            # alternate the order so slow drift of the machine's load hits both paths alike
            order = ("direct", "service") if i % 2 == 0 else ("service", "direct")
            got = {}
            for path in order:
                if path == "direct":
                    got[path] = run_direct(client, model, budget, args)
                else:
                    got[path] = run_service(stack, model, budget, args, poll)
                name = f"repeat {i + 1}" if i >= 0 else "warm-up "
                out(f"  {name} {path:7s}: {got[path]['wall']:8.2f} s  (1-min load avg before: {got[path]['load']:.2f})")
            if i >= 0:
                pairs.append((got["direct"], got["service"]))
    finally:
        stack.close()
    return {"model": model, "budget": budget, "pairs": pairs}


def report(summary: dict, out: Tee) -> bool:
    model, budget, pairs = summary["model"], summary["budget"], summary["pairs"]
    direct = [d["wall"] for d, _ in pairs]
    service = [s["wall"] for _, s in pairs]
    runner = [s["runner_wall"] for _, s in pairs]
    d_search = [sum(e["seconds"] for e in d["history"]) for d, _ in pairs]
    s_search = [sum(e["seconds"] for e in s["history"]) for _, s in pairs]
    overhead = [g["roundtrip"] - g["compute"] for _, s in pairs for g in s["per_gen"]]
    worker_side = [g["worker"] - g["compute"] for _, s in pairs for g in s["per_gen"]]
    compute = [g["compute"] for _, s in pairs for g in s["per_gen"]]
    matched = sum(g["batches"] > 0 for _, s in pairs for g in s["per_gen"])
    n_gens = sum(len(s["per_gen"]) for _, s in pairs)
    step_delta = [b["seconds"] - a["seconds"] for d, s in pairs for a, b in zip(d["history"], s["history"])]
    med = float(np.median(direct)), float(np.median(service))
    out(f"\n{model}: wall time per job (median of {len(pairs)})")
    out(f"  {'path':34s} {'median s':>9s} {'min s':>8s} {'max s':>8s}")
    out(f"  {'direct (run() in-process)':34s} {med[0]:9.2f} {min(direct):8.2f} {max(direct):8.2f}")
    out(f"  {'service (submit -> succeeded)':34s} {med[1]:9.2f} {min(service):8.2f} {max(service):8.2f}")
    out(f"  {'service (runner claim -> done)':34s} {np.median(runner):9.2f} {min(runner):8.2f} {max(runner):8.2f}")
    out(f"  {'search only, direct (sum gen s)':34s} {np.median(d_search):9.2f}")
    out(f"  {'search only, service (sum gen s)':34s} {np.median(s_search):9.2f}")
    ratio = med[1] / med[0]
    ratios = [s / d for d, s in zip(direct, service)]
    out(
        f"  ratio service / direct: {ratio:.3f} (per repeat: {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"search only {np.median(s_search) / np.median(d_search):.3f}"
    )
    claim = [s["job"]["started_at"] - s["job"]["created_at"] for _, s in pairs]
    fixed = [
        s["wall"] - d["wall"] - sum(b["seconds"] - a["seconds"] for a, b in zip(d["history"], s["history"]))
        for d, s in pairs
    ]
    out(
        f"  per job: submit -> claimed by the runner {1000 * np.median(claim):.0f} ms (median); service - direct "
        f"outside the generations {1000 * np.median(fixed):.0f} ms (median; claim, prepare, checkpoints of "
        f"generation 0, finalize)"
    )
    d_out = [d["wall"] - d["evaluating"] for d, _ in pairs]
    s_out = [s["wall"] - s["evaluating"] for _, s in pairs]
    added = float(np.median([b - a for a, b in zip(d_out, s_out)]))
    evals = ", ".join(f"{d['evaluations']}/{s['evaluations']}" for d, s in pairs)
    out(
        f"  time outside model evaluation per job (wall - time evaluating; evaluations direct/service {evals}): "
        f"direct {np.median(d_out):.2f} s, service {np.median(s_out):.2f} s -> the service adds {added:.2f} s = "
        f"{100 * added / med[0]:.1f}% of the direct wall (ratio with equal compute: {1 + added / med[0]:.3f})"
    )
    out(f"  per generation (n = {n_gens} generations, {matched} matched to worker results):")
    out(f"    {'measure':52s} {'p50 ms':>8s} {'p99 ms':>8s}")
    out(
        f"    {'engine compute (worker results)':52s} {1000 * percentile(compute, 50):8.1f} "
        f"{1000 * percentile(compute, 99):8.1f}"
    )
    out(
        f"    {'queue overhead = roundtrip - engine compute':52s} {1000 * percentile(overhead, 50):8.1f} "
        f"{1000 * percentile(overhead, 99):8.1f}"
    )
    out(
        f"    {'  of which in the worker outside the engine':52s} {1000 * percentile(worker_side, 50):8.1f} "
        f"{1000 * percentile(worker_side, 99):8.1f}"
    )
    out(
        f"    {'step time service - direct (paired generations)':52s} {1000 * percentile(step_delta, 50):8.1f} "
        f"{1000 * percentile(step_delta, 99):8.1f}"
    )
    ok = True
    for i, (d, s) in enumerate(pairs):
        c = compare(d, s, budget)
        ok = ok and c["agree"]
        out(
            f"  repeat {i + 1} agreement: calls direct/service {c['calls'][0]}/{c['calls'][1]} (budget {budget}) "
            f"{'ok' if c['calls_ok'] else 'MISMATCH'}; best dev {c['dev'][0]:.4f}/{c['dev'][1]:.4f}; test "
            f"{c['test'][0]:.4f}/{c['test'][1]:.4f}; max |loss diff| {c['loss_diff']:.3g} -> "
            f"{'identical' if c['agree'] else 'DIFFERENT'}"
        )
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", choices=["real", "fake"], default=["real", "fake"])
    parser.add_argument("--task", default="mr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--dim", type=int, default=500)
    parser.add_argument("--dev-every", type=int, default=1000, help="default: dev only after the last generation")
    parser.add_argument("--real-budget", type=int, default=60)
    parser.add_argument("--real-repeats", type=int, default=1)
    parser.add_argument("--real-warmup", type=int, default=0, help="uncounted warm-up pairs, real model")
    parser.add_argument("--fake-model", default="fake:0.05")
    parser.add_argument("--fake-budget", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="repeats with the fake engine")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="uncounted warm-up pairs, fake engine (the first "
        "job after startup pays one-time costs: lazy imports, connections)",
    )
    parser.add_argument("--memory-cap-mb", type=float, default=256.0)
    parser.add_argument("--redis-persistent", action="store_true", help="Redis AOF, fsync always")
    parser.add_argument("--out", default=None, help="default bench/results/service_overhead[-ENGINE].txt")
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "" if len(args.engines) > 1 else f"-{args.engines[0]}"
        args.out = str(ROOT / "bench" / "results" / f"service_overhead{suffix}.txt")

    import torch

    out = Tee()
    out(
        f"service overhead: direct run() vs REST + Redis + 1 worker process; {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}; Redis {'AOF fsync always' if args.redis_persistent else 'no persistence'}"
    )
    ok = True
    for kind in args.engines:
        ok = report(bench_engine(kind, args, out), out) and ok
    out(f"\nresults agree between paths: {'yes' if ok else 'NO'}")
    out.save(Path(args.out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
