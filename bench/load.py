"""API latency while 50 jobs run at once, and that all 50 complete with calls == budget.

Setup: private redis-server, `nograd serve` with auth on (an API key from `nograd keys create`; every request
looks its key up in the store) and --max-concurrent-jobs 50 (so the runner really runs all 50 at once), no
embedded worker; --workers (default 4) `nograd worker --model fake:0.05` processes on the Redis queue. Jobs: bbt on
mr, budget 200, popsize 20, dim 500, dev_every 100, seeds 0..49.

Load, all from this process with httpx.AsyncClient (keep-alive connections):
- POST /v1/jobs: the 50 submissions, one every --submit-interval seconds, each fired without waiting for the
  previous one, so later submissions land while earlier jobs run (submission latency = until the 201 arrives);
- GET /v1/jobs/{id} (a random submitted job) and GET /v1/jobs (the first page, 50 jobs): --clients concurrent
  closed-loop clients, alternating the two, --think seconds between requests, until every job has finished.
Every response must be 2xx. Latency percentiles are over all requests of that kind. For comparison the same GET
loop runs for --idle seconds after the jobs have finished (same service, nothing running).

Usage: .venv/bin/python bench/load.py [--jobs 50] [--workers 4] [--clients 8]
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
from _stack import ROOT, Stack, Tee, percentile  # noqa: E402

import httpx  # noqa: E402

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


async def get_loop(http, rec: Recorder, ids: list[str], stop: asyncio.Event, think: float, seed: int) -> None:
    rng = random.Random(seed)
    turn = seed % 2
    while not stop.is_set():
        try:
            if turn == 0 and ids:
                await rec.request(http, "GET /v1/jobs/{id}", "GET", f"/v1/jobs/{rng.choice(ids)}")
            else:
                await rec.request(http, "GET /v1/jobs", "GET", "/v1/jobs")
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
        turn ^= 1
        if think:
            await asyncio.sleep(think)


async def drive(stack: Stack, args) -> dict:
    limits = httpx.Limits(max_connections=args.clients + args.jobs + 4, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=60, limits=limits) as http:
        busy, idle = Recorder(), Recorder()
        ids: list[str] = []
        stop = asyncio.Event()

        async def submit(i: int) -> None:
            body = {"method": "bbt", "task": "mr", "model": stack.model, "budget": args.budget, "seed": i,
                    "dev_every": args.dev_every, "options": {"popsize": args.popsize, "dim": args.dim}}
            response = await busy.request(http, "POST /v1/jobs", "POST", "/v1/jobs", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])

        started = time.time()
        loops = [asyncio.create_task(get_loop(http, busy, ids, stop, args.think, k)) for k in range(args.clients)]
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
        loops = [asyncio.create_task(get_loop(http, idle, ids, stop_idle, args.think, k))
                 for k in range(args.clients)]
        await asyncio.sleep(args.idle)
        stop_idle.set()
        await asyncio.gather(*loops)
    return {"busy": busy, "idle": idle, "jobs": jobs, "started": started, "submitted": submitted,
            "finished": finished}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--model", default="fake:0.05")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--dim", type=int, default=500)
    parser.add_argument("--dev-every", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8, help="concurrent GET clients")
    parser.add_argument("--think", type=float, default=0.05, help="seconds between a client's requests")
    parser.add_argument("--submit-interval", type=float, default=0.1)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the GET loop after the jobs finished")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--redis-persistent", action="store_true", help="Redis AOF, fsync always")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.txt"))
    args = parser.parse_args(argv)

    out = Tee()
    out(f"load: {args.jobs} concurrent bbt jobs (budget {args.budget}, popsize {args.popsize}, dim {args.dim}) on "
        f"{args.model}; Redis queue ({'AOF fsync always' if args.redis_persistent else 'no persistence'}) + "
        f"{args.workers} worker processes; auth on; {args.clients} GET clients (think {args.think * 1000:.0f} ms), "
        f"one submission every {args.submit_interval * 1000:.0f} ms; {os.cpu_count()} CPUs")
    stack = Stack(args.model, workers=args.workers, auth=True, redis_persistent=args.redis_persistent,
                  serve_args=("--max-concurrent-jobs", str(args.jobs)))
    try:
        stack.start(worker_timeout=120)
        got = asyncio.run(drive(stack, args))
    finally:
        stack.close()

    jobs = got["jobs"]
    durations = sorted(j["finished_at"] - j["created_at"] for j in jobs)
    wall = got["finished"] - got["started"]
    out(f"\nall {len(jobs)} jobs finished {wall:.1f} s after the first submission (submissions took "
        f"{got['submitted'] - got['started']:.1f} s); per job submit -> finished p50 "
        f"{percentile(durations, 50):.1f} s, max {durations[-1]:.1f} s; "
        f"{sum(j['calls'] for j in jobs) / wall:.0f} candidates/s overall")
    out("")
    out(f"{'request':22s} {'phase':18s} {'n':>6s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} "
        f"{'errors':>6s}")
    for phase, rec, seconds in (("while jobs run", got["busy"], wall), ("idle (after)", got["idle"], args.idle)):
        for kind in ("POST /v1/jobs", "GET /v1/jobs/{id}", "GET /v1/jobs"):
            values = rec.latency.get(kind, [])
            if not values and kind.startswith("POST"):
                continue
            out(f"{kind:22s} {phase:18s} {len(values):6d} {len(values) / seconds:7.1f} "
                f"{1000 * percentile(values, 50):8.1f} {1000 * percentile(values, 99):8.1f} "
                f"{1000 * max(values, default=float('nan')):8.1f} {len(rec.errors.get(kind, [])):6d}")
    errors = {k: v for rec in (got["busy"], got["idle"]) for k, v in rec.errors.items()}
    for kind, messages in errors.items():
        out(f"  {kind}: first error: {messages[0]}")
    bad = [j for j in jobs if j["status"] != "succeeded" or j["calls"] != args.budget]
    out("")
    for j in bad[:10]:
        out(f"  job {j['id']}: {j['status']} calls {j['calls']}/{args.budget} error {j['error']}")
    ok = len(jobs) == args.jobs and not bad and not errors
    out(f"all {args.jobs} jobs succeeded with calls == budget ({args.budget}) and no request failed: "
        f"{'yes' if ok else 'NO'}")
    out.save(Path(args.out))
    assert len(jobs) == args.jobs and not bad, f"{len(bad)} jobs did not succeed with calls == budget"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
