"""Throughput of one Redis-backed service with 1, 2, 4, 8 worker processes (fake engine, fixed latency per batch).

Setup, fresh for every worker count: private redis-server, `nograd serve --batch-size 2` (no embedded worker),
N `nograd worker --model fake:0.2` processes. Every evaluate call of the fake engine sleeps 0.2 s whatever the
batch holds, so a worker scores at most batch_size / latency = 10 candidates per second and N workers at most
10 N: the ideal is exactly linear, and anything below it is the service's doing (queue, runner, this box's CPUs).

Why these settings: 8 concurrent bbt jobs (popsize 16, dim 500: the default projection dimension) with batch
size 2 split every population into 8 batches, so up to 8 x 8 = 64 batches are outstanding and each job alone
could keep 8 workers busy; the queue keeps a backlog (printed: queue depth = waiting + in-progress batches,
sampled every second, must stay above N for no worker to idle). dev_every is above the budget, so the measured
window holds training batches only (dev evaluations use worker time but are not calls), and the budget is large
enough that no job finishes during the measurement.

Measured in the steady state: after every job has completed at least one generation plus --warmup seconds, a
--window seconds window. Each job's history entries give (time, calls) per generation; throughput = candidates
(calls) of all jobs' generations finished inside the window after the first one / time from the first to the
last of those completions (an event-rate estimate, free of the window edges' quantization). Speedup is against
1 worker; efficiency = speedup / N (goal >= 0.9). Worker busy % = the workers' reported busy seconds
(heartbeats) over N x window.

Usage: .venv/bin/python bench/scaleout.py [--workers 1 2 4 8] [--window 30] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
from _stack import ROOT, Stack, Tee  # noqa: E402

from nograd.sdk import Client  # noqa: E402


def sample_depth(url: str, stop: threading.Event, out: list) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            try:
                out.append(http.get("/healthz").json()["queue_depth"])
            except httpx.HTTPError:
                pass
            stop.wait(1.0)


def busy(stack: Stack) -> float:
    return sum(w["busy_seconds"] for w in stack.live_workers())


def measure(n: int, args) -> dict:
    model = f"fake:{args.latency:g}"
    serve_args = ("--batch-size", str(args.batch_size), "--max-concurrent-jobs", str(max(16, args.jobs)))
    stack = Stack(model, workers=n, serve_args=serve_args, redis_persistent=args.redis_persistent)
    try:
        stack.start(worker_timeout=120)
        with Client(stack.url, stack.api_key) as api:
            body = {
                "method": "bbt",
                "task": "mr",
                "model": model,
                "budget": args.budget,
                "dev_every": 10 * args.budget,
                "options": {"popsize": args.popsize, "dim": args.dim},
            }
            ids = [api.submit(**body, seed=i)["id"] for i in range(args.jobs)]

            def warmed() -> bool:
                jobs = [api.job(i) for i in ids]
                bad = [j for j in jobs if j["status"] in ("failed", "cancelled", "succeeded")]
                if bad:
                    raise RuntimeError(f"job {bad[0]['id']} {bad[0]['status']} early: {bad[0]['error']}")
                return all(j["status"] == "running" and j["generation"] >= 1 for j in jobs)

            deadline = time.monotonic() + 600
            while not warmed():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jobs did not start\n{stack.log_tail()}")
                time.sleep(0.5)
            time.sleep(args.warmup)
            depths: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_depth, args=(stack.url, stop, depths), daemon=True)
            busy0, t1 = busy(stack), time.time()
            sampler.start()
            time.sleep(args.window)
            busy1, t2 = busy(stack), time.time()
            stop.set()
            sampler.join(10)
            histories = [api.history(i) for i in ids]
            jobs = [api.job(i) for i in ids]
    finally:
        stack.close()
    if any(j["status"] != "running" or j["calls"] >= args.budget for j in jobs):
        raise RuntimeError("a job finished inside the window; raise --budget")
    events = []  # (time, calls scored by that generation)
    for history in histories:
        for prev, entry in zip(history, history[1:]):
            if t1 < entry["time"] <= t2:
                events.append((entry["time"], entry["calls"] - prev["calls"]))
    events.sort()
    if len(events) < 2:
        raise RuntimeError("fewer than 2 generations finished in the window; lengthen --window")
    span = events[-1][0] - events[0][0]
    calls = sum(c for _, c in events[1:])
    return {
        "n": n,
        "rate": calls / span,
        "events": len(events),
        "span": span,
        "busy": (busy1 - busy0) / (n * (t2 - t1)),
        "depth_min": min(depths) if depths else None,
        "depth_mean": sum(depths) / len(depths) if depths else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per evaluate call of the fake engine")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--popsize", type=int, default=16)
    parser.add_argument("--dim", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--budget", type=int, default=20000)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after every job's first generation")
    parser.add_argument("--window", type=float, default=30.0, help="measurement window, seconds")
    parser.add_argument("--redis-persistent", action="store_true", help="Redis AOF, fsync always")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaleout.txt"))
    args = parser.parse_args(argv)

    out = Tee()
    per_worker = args.batch_size / args.latency
    out(
        f"scale-out: fake:{args.latency:g} ({args.latency * 1000:.0f} ms per batch), {args.jobs} concurrent bbt "
        f"jobs, popsize {args.popsize}, dim {args.dim}, batch size {args.batch_size} "
        f"({-(-args.popsize // args.batch_size)} batches per population), Redis "
        f"{'AOF fsync always' if args.redis_persistent else 'no persistence'}; {os.cpu_count()} CPUs"
    )
    out(
        f"steady state: {args.window:.0f} s window after every job's first generation + {args.warmup:.0f} s; "
        f"ideal {per_worker:.0f} candidates/s per worker"
    )
    rows = []
    for n in args.workers:
        row = measure(n, args)
        rows.append(row)
        out(
            f"  {n} worker(s): {row['rate']:6.1f} candidates/s ({row['events']} generations over "
            f"{row['span']:.1f} s), workers busy {100 * row['busy']:.0f}%, queue depth min/mean "
            f"{row['depth_min']}/{row['depth_mean']:.1f}, load avg {os.getloadavg()[0]:.2f}"
        )
    base = next((r["rate"] for r in rows if r["n"] == 1), rows[0]["rate"] / rows[0]["n"])
    out("")
    out(
        f"{'workers':>7s} {'cand/s':>8s} {'ideal':>7s} {'of ideal':>8s} {'speedup':>8s} {'efficiency':>10s} "
        f"{'busy':>6s} {'depth min':>9s}"
    )
    ok = True
    for r in rows:
        speedup = r["rate"] / base
        eff = speedup / r["n"]
        ok = ok and eff >= 0.9
        out(
            f"{r['n']:7d} {r['rate']:8.1f} {r['n'] * per_worker:7.0f} {100 * r['rate'] / (r['n'] * per_worker):7.0f}% "
            f"{speedup:7.2f}x {eff:10.2f} {100 * r['busy']:5.0f}% {r['depth_min']!s:>9s}"
        )
    out(f"\nefficiency >= 0.9 at every worker count: {'yes' if ok else 'NO'}")
    out.save(Path(args.out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
