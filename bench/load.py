"""API latency while 50 jobs run at once, and that all 50 complete with calls == budget.

Setup: private redis-server, `nograd serve` with auth on (an API key from `nograd keys create`; every request
looks its key up in the store) and --max-concurrent-jobs 50 (so the runner really runs all 50 at once), no
embedded worker; --workers (default 4) `nograd worker --model fake:0.05` processes on the Redis queue. Jobs: bbt on
mr, budget 200, popsize 20, dim 500, dev_every 100, seeds 0..49.

Load, all from this process with httpx.AsyncClient (keep-alive connections):
- POST /v1/jobs: the 50 submissions, one every --submit-interval seconds, each fired without waiting for the
  previous one, so later submissions land while earlier jobs run (submission latency = until the 201 arrives);
- GET /v1/jobs/{id} (a random submitted job) and GET /v1/jobs (the first page, 50 jobs), alternating, open loop
  at --rate requests per second in all (each fired on schedule whether or not earlier ones have answered, so a
  slow server is not rewarded with a lighter load), until every job has finished.
Every response must be 2xx. Latency percentiles are over all requests of that kind. For comparison the same GET
load runs for --idle seconds after the jobs have finished (same service, nothing running).

By default one job runs to completion before the load starts (not counted), so the numbers are for a warm
server; `--no-warmup` measures a cold one. (Before nograd.engine's imports were made lazy, the first finishing
job imported torch on the API's event loop and stalled every request for seconds; the cold run checks that this
stays fixed.)

Two setups side by side (--runners): `api`, the default deployment (the job runner lives in the API process and
shares its event loop; the optimizer's CPU work runs on one dedicated thread), and `split`, where a second
`nograd serve` process on the same store and Redis runs the jobs and the API process has NOGRAD_RUN_JOBS=false
(what `nograd serve --no-run-jobs` plus `nograd runner` gives); the difference is the latency the runner's CPU
work (optimizer ask/tell, checkpoint serialization, wire encoding) adds to API requests in the same process.

Usage: .venv/bin/python bench/load.py [--jobs 50] [--workers 4] [--rate 20] [--runners api split] [--no-warmup]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
from _stack import ROOT, Stack, Tee, percentile  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")


class Recorder:
    def __init__(self):
        self.latency: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}

    async def request(self, http: httpx.AsyncClient, kind: str, method: str, url: str, **kw) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.errors.setdefault(kind, []).append(f"{type(exc).__name__}: {exc}")
            raise
        self.latency.setdefault(kind, []).append(time.perf_counter() - started)
        if response.status_code >= 300:
            self.errors.setdefault(kind, []).append(f"HTTP {response.status_code}: {response.text[:200]}")
        return response


async def get_load(http, rec: Recorder, ids: list[str], stop: asyncio.Event, rate: float, seed: int) -> None:
    """Open loop: a request every 1/rate seconds whether or not earlier ones have answered (so a slow server
    does not get a lighter load), alternating GET /v1/jobs/{id} (a random submitted job) and GET /v1/jobs."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()
    turn, due = 0, loop.time()

    async def one(kind: str, url: str) -> None:
        try:
            await rec.request(http, kind, "GET", url)
        except httpx.HTTPError:
            pass

    while not stop.is_set():
        if turn == 0 and ids:
            task = asyncio.create_task(one("GET /v1/jobs/{id}", f"/v1/jobs/{rng.choice(ids)}"))
        else:
            task = asyncio.create_task(one("GET /v1/jobs", "/v1/jobs"))
        pending.add(task)
        task.add_done_callback(pending.discard)
        turn ^= 1
        due += 1.0 / rate
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
        except TimeoutError:
            pass
    await asyncio.gather(*pending)


async def drive(stack: Stack, args) -> dict:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=60, limits=limits) as http:
        busy, idle = Recorder(), Recorder()
        ids: list[str] = []
        stop = asyncio.Event()

        def body(seed: int) -> dict:
            return {
                "method": "bbt",
                "task": "mr",
                "model": stack.model,
                "budget": args.budget,
                "seed": seed,
                "dev_every": args.dev_every,
                "options": {"popsize": args.popsize, "dim": args.dim},
            }

        async def submit(i: int) -> None:
            response = await busy.request(http, "POST /v1/jobs", "POST", "/v1/jobs", json=body(i))
            response.raise_for_status()
            ids.append(response.json()["id"])

        if args.warmup:  # one job through every code path first (one-time imports in the server and workers)
            job = (await http.post("/v1/jobs", json=body(10_000))).raise_for_status().json()
            while job["status"] not in TERMINAL:
                await asyncio.sleep(0.5)
                job = (await http.get(f"/v1/jobs/{job['id']}")).raise_for_status().json()
            if job["status"] != "succeeded":
                raise RuntimeError(f"warm-up job {job['status']}: {job['error']}")

        started = time.time()
        loops = [asyncio.create_task(get_load(http, busy, ids, stop, args.rate, 0))]
        submissions = []
        for i in range(args.jobs):
            submissions.append(asyncio.create_task(submit(i)))
            await asyncio.sleep(args.submit_interval)
        await asyncio.gather(*submissions)
        submitted = time.time()

        # completion monitor (its requests are not counted)
        deadline = time.monotonic() + args.timeout
        async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=60) as monitor:
            while True:
                page = (await monitor.get("/v1/jobs", params={"limit": 500})).json()
                jobs = [j for j in page["data"] if j["id"] in set(ids)]
                if len(jobs) == len(ids) and all(j["status"] in TERMINAL for j in jobs):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jobs unfinished after {args.timeout:.0f} s\n{stack.log_tail()}")
                await asyncio.sleep(1.0)
        finished = time.time()
        stop.set()
        await asyncio.gather(*loops)

        stop_idle = asyncio.Event()
        loops = [asyncio.create_task(get_load(http, idle, ids, stop_idle, args.rate, 1))]
        await asyncio.sleep(args.idle)
        stop_idle.set()
        await asyncio.gather(*loops)
    return {"busy": busy, "idle": idle, "jobs": jobs, "started": started, "submitted": submitted, "finished": finished}


RUNNERS = {
    "api": "jobs run in the API process (the default deployment)",
    "split": "jobs run in a separate runner process (API: NOGRAD_RUN_JOBS=false)",
}


def one_setup(runner: str, args, out: Tee) -> tuple[bool, list]:
    """Run the load against one setup; returns (jobs ok, table rows)."""
    stack = Stack(
        args.model,
        workers=args.workers,
        auth=True,
        redis_persistent=args.redis_persistent,
        serve_args=("--max-concurrent-jobs", str(args.jobs)),
        split_runner=runner == "split",
    )
    try:
        stack.start(worker_timeout=120)
        got = asyncio.run(drive(stack, args))
    finally:
        stack.close()
    jobs = got["jobs"]
    durations = sorted(j["finished_at"] - j["created_at"] for j in jobs)
    wall = got["finished"] - got["started"]
    out(
        f"[{runner}] {RUNNERS[runner]}: all {len(jobs)} jobs finished {wall:.1f} s after the first submission "
        f"(submissions took {got['submitted'] - got['started']:.1f} s); per job submit -> finished p50 "
        f"{percentile(durations, 50):.1f} s, max {durations[-1]:.1f} s; "
        f"{sum(j['calls'] for j in jobs) / wall:.0f} candidates/s overall"
    )
    rows = []
    for phase, rec, seconds in (("while jobs run", got["busy"], wall), ("idle (after)", got["idle"], args.idle)):
        for kind in ("POST /v1/jobs", "GET /v1/jobs/{id}", "GET /v1/jobs"):
            values = rec.latency.get(kind, [])
            if values:
                rows.append((runner, kind, phase, values, seconds, len(rec.errors.get(kind, []))))
    errors = {k: v for rec in (got["busy"], got["idle"]) for k, v in rec.errors.items()}
    for kind, messages in errors.items():
        out(f"  {kind}: {len(messages)} failed; first: {messages[0]}")
    bad = [j for j in jobs if j["status"] != "succeeded" or j["calls"] != args.budget]
    for j in bad[:10]:
        out(f"  job {j['id']}: {j['status']} calls {j['calls']}/{args.budget} error {j['error']}")
    ok = len(jobs) == args.jobs and not bad
    out(
        f"  all {args.jobs} jobs succeeded with calls == budget ({args.budget}): {'yes' if ok else 'NO'}; "
        f"failed requests: {sum(len(v) for v in errors.values())}"
    )
    return ok and not errors, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--model", default="fake:0.05")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--dim", type=int, default=500)
    parser.add_argument("--dev-every", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="GET requests per second (open loop)")
    parser.add_argument("--submit-interval", type=float, default=0.1)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the GET loop after the jobs finished")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--runners",
        nargs="+",
        choices=list(RUNNERS),
        default=list(RUNNERS),
        help="api: jobs run in the API process; split: in a second `nograd serve` process "
        "(NOGRAD_RUN_JOBS=false on the API one)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the warm-up job (measure a cold server: its first finishing job imports torch on the event loop)",
    )
    parser.add_argument("--redis-persistent", action="store_true", help="Redis AOF, fsync always")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.txt"))
    args = parser.parse_args(argv)

    out = Tee()
    out(
        f"load: {args.jobs} concurrent bbt jobs (budget {args.budget}, popsize {args.popsize}, dim {args.dim}) on "
        f"{args.model}; Redis queue ({'AOF fsync always' if args.redis_persistent else 'no persistence'}) + "
        f"{args.workers} worker processes; auth on; GETs at {args.rate:g}/s (open loop), "
        f"one submission every {args.submit_interval * 1000:.0f} ms; {os.cpu_count()} CPUs; "
        f"{'warm server (one job ran to completion first)' if args.warmup else 'COLD server (no warm-up job)'}"
    )
    ok, rows = True, []
    for runner in args.runners:
        good, got = one_setup(runner, args, out)
        ok, rows = ok and good, rows + got
    out("")
    out(
        f"{'runner':6s} {'request':18s} {'phase':15s} {'n':>5s} {'req/s':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'max ms':>8s} {'errors':>6s}"
    )
    for runner, kind, phase, values, seconds, errors in rows:
        out(
            f"{runner:6s} {kind:18s} {phase:15s} {len(values):5d} {len(values) / seconds:6.1f} "
            f"{1000 * percentile(values, 50):8.1f} {1000 * percentile(values, 99):8.1f} {1000 * max(values):8.1f} "
            f"{errors:6d}"
        )
    out(
        f"\nevery setup: all {args.jobs} jobs succeeded with calls == budget and no request failed: "
        f"{'yes' if ok else 'NO'}"
    )
    out.save(Path(args.out))
    assert ok, "some jobs did not succeed with calls == budget, or requests failed"
    return 0


if __name__ == "__main__":
    sys.exit(main())
