"""The abuse mix against a fake-model server while a well-behaved tenant runs jobs, side by side with the same
jobs on the idle server (one run, so machine noise hits both alike).

Abuse: schema-valid jobs that would need gigabytes, anonymous 200 MB chunked bodies, hundreds of event streams, and
a tenant flooding the service with long jobs. Prints `/livez` p50/p99, the well-behaved tenant's job latency
(idle vs under abuse), what each attack got back, and the server's peak RSS. The well-behaved tenant and the
`/livez` sampler run in a process of their own, so the attackers' event loop does not count as server latency
(they still share this machine's cores with the server).

    .venv/bin/python bench/abuse.py [--streams 500] [--flood 40] [--jobs 3]

Goals (issue 12): /livez p99 < 200 ms, no process above its configured budget, well-behaved jobs within 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GOOD_JOB = {"method": "bbt", "task": "trec", "model": "fake:0.02", "budget": 200, "options": {"dim": 50, "popsize": 20}}
FLOOD_JOB = {**GOOD_JOB, "budget": 4000}
HUGE_JOB = {**GOOD_JOB, "budget": 5000, "options": {"dim": 10000, "popsize": 1000}}
MB = 2**20


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def key(data_dir: Path, tenant: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "nograd.cli", "keys", "create", "--tenant", tenant, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def probe(url: str, key: str, jobs: int) -> dict:
    """The well-behaved tenant and the `/livez` sampler, in a process of their own (`--probe`): what they measure
    is the server's latency, not the attackers' event loop in the bench process."""
    auth = {"Authorization": f"Bearer {key}"}
    stop, livez = threading.Event(), []

    def sample() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    client.get("/livez")
                except httpx.HTTPError:
                    pass
                livez.append(time.perf_counter() - started)
                stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    latencies, parts = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(jobs):
            started = time.perf_counter()
            created = client.post("/v1/jobs", json=GOOD_JOB, headers=auth)
            created.raise_for_status()
            job_id = created.json()["id"]
            while (job := client.get(f"/v1/jobs/{job_id}", headers=auth).json())["status"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                time.sleep(0.1)
            if job["status"] != "succeeded":
                raise RuntimeError(f"well-behaved job {job_id} ended {job['status']}: {job.get('error')}")
            latencies.append(time.perf_counter() - started)
            entries = client.get(f"/v1/jobs/{job_id}/history", headers=auth).json()["data"]
            steps = [e for e in entries if "seconds" in e]
            parts.append(
                {
                    "queued": job["started_at"] - job["created_at"],
                    "running": job["finished_at"] - job["started_at"],
                    "generations": sum(e["seconds"] for e in steps),
                    "worker_roundtrips": sum(e.get("roundtrip_seconds", 0.0) for e in steps),
                }
            )
    stop.set()
    sampler.join()
    return {"livez": livez, "jobs": latencies, "parts": parts}


async def run_probe(url: str, key: str, jobs: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", url, key, str(jobs), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the probe failed ({proc.returncode})")
    return json.loads(out)


def anonymous_bodies(url: str, stop: threading.Event, codes: collections.Counter) -> None:
    def body():
        piece = b"x" * MB
        for _ in range(200):
            yield piece

    while not stop.is_set():
        try:
            codes[httpx.post(f"{url}/v1/jobs", content=body(), timeout=30).status_code] += 1
        except httpx.HTTPError:
            codes["hung up"] += 1


async def oversized(client: httpx.AsyncClient, auth: dict, stop: asyncio.Event, codes: collections.Counter) -> None:
    while not stop.is_set():
        codes[(await client.post("/v1/jobs", json=HUGE_JOB, headers=auth)).status_code] += 1
        await asyncio.sleep(0.05)


async def stream(client: httpx.AsyncClient, auth: dict, job_id: str, stop: asyncio.Event, codes) -> None:
    try:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth, timeout=None) as response:
            codes[response.status_code] += 1
            if response.status_code != 200:
                return
            async for _ in response.aiter_bytes():
                if stop.is_set():
                    return
    except httpx.HTTPError:
        codes["error"] += 1


async def attack(url: str, keys: dict[str, str], options: dict) -> dict:
    """The abuse mix (`--attack`): prints `ready` once the flood is submitted and the attacks run, keeps them up
    until a line on stdin, then cancels its jobs and returns what each attack got back and its CPU time."""
    auth = {t: {"Authorization": f"Bearer {k}"} for t, k in keys.items()}
    codes = {name: collections.Counter() for name in ("oversized", "anonymous", "flood", "streams")}
    limits = httpx.Limits(max_connections=2000)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        flood_ids = []
        for _ in range(options["flood"]):
            response = await client.post("/v1/jobs", json=FLOOD_JOB, headers=auth["flood"])
            codes["flood"][response.status_code] += 1
            if response.status_code == 201:
                flood_ids.append(response.json()["id"])
        target = (await client.post("/v1/jobs", json=FLOOD_JOB, headers=auth["streams"])).json()["id"]
        stop, halt = asyncio.Event(), threading.Event()
        threads = [
            threading.Thread(target=anonymous_bodies, args=(url, halt, codes["anonymous"]), daemon=True)
            for _ in range(options["anonymous"])
        ]
        for thread in threads:
            thread.start()
        tasks = [
            asyncio.create_task(oversized(client, auth["huge"], stop, codes["oversized"])),
            *[
                asyncio.create_task(stream(client, auth["streams"], target, stop, codes["streams"]))
                for _ in range(options["streams"])
            ],
        ]
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        stop.set()
        halt.set()
        for job_id in flood_ids:
            await client.post(f"/v1/jobs/{job_id}/cancel", headers=auth["flood"])
        await client.post(f"/v1/jobs/{target}/cancel", headers=auth["streams"])
        await asyncio.wait(tasks, timeout=20)
        for thread in threads:
            thread.join(35)
    return {
        "codes": {name: dict(counter) for name, counter in codes.items()},
        "cpu": time.process_time(),
        "peak_rss_mb": peak_rss_mb(os.getpid()),
    }


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="nograd-abuse-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "nograd.cli"]
    serve = [*cli, "serve", "--data-dir", str(root), "--port", str(port), "--models", "fake,fake:0.02"]
    helpers = []  # Redis and the workers, with --workers N
    if args.workers:
        redis_port = free_port()
        helpers.append(
            start(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], root / "redis.log")
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        serve += ["--redis-url", redis_url, "--no-embedded-worker"]
        if args.runner:  # the jobs' CPU work in a process of its own: the API's event loop only serves requests
            serve.append("--no-run-jobs")
            runner = [*cli, "runner", "--redis-url", redis_url, "--data-dir", str(root)]
            helpers.append(start(runner, root / "runner.log"))
        for i in range(args.workers):
            argv = [*cli, "worker", "--redis-url", redis_url, "--model", "fake:0.02", "--heartbeat", "0.5"]
            helpers.append(start(argv, root / f"worker-{i}.log"))
    server = start(serve, root / "serve.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=2000)) as client:
            for _ in range(600):
                try:
                    if (await client.get("/livez")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            raw = {t: key(root, t) for t in ("good", "flood", "streams", "huge")}

            # Idle: the well-behaved tenant alone.
            idle_probe = await run_probe(url, raw["good"], args.jobs)

            # Under abuse: the attackers run in a process of their own at the lowest CPU priority (unless
            # --same-priority), standing in for clients on other machines; what the server spends on them counts.
            cpu_before = cpu_seconds(server.pid)
            abuse_started = time.perf_counter()
            attacker = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--attack",
                url,
                json.dumps({t: raw[t] for t in ("flood", "streams", "huge")}),
                json.dumps({k: getattr(args, k) for k in ("streams", "flood", "anonymous")}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=None if args.same_priority else (lambda: os.nice(19)),
            )
            if (await attacker.stdout.readline()).strip() != b"ready":
                raise RuntimeError("the attackers did not start")
            busy_probe = await run_probe(url, raw["good"], args.jobs)
            abuse_seconds = time.perf_counter() - abuse_started
            server_cpu = cpu_seconds(server.pid) - cpu_before
            out, _ = await attacker.communicate(b"stop\n")
            report = json.loads(out)
            codes, attackers_cpu = report["codes"], report["cpu"]
    finally:
        peak = peak_rss_mb(server.pid)
        workers_peak = max((peak_rss_mb(p.pid) for p in helpers[1 : 1 + args.workers]), default=float("nan"))
        runner_peak = peak_rss_mb(helpers[-1].pid) if args.workers and args.runner else None
        stop_all([server, *helpers])

    idle_livez, idle, abuse_livez, busy = (
        idle_probe["livez"],
        idle_probe["jobs"],
        busy_probe["livez"],
        busy_probe["jobs"],
    )

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")

    print(
        f"/livez idle:        p50 {pct(idle_livez, 50):7.1f} ms  p99 {pct(idle_livez, 99):7.1f} ms  "
        f"(n={len(idle_livez)})"
    )
    print(
        f"/livez under abuse: p50 {pct(abuse_livez, 50):7.1f} ms  p99 {pct(abuse_livez, 99):7.1f} ms  "
        f"(n={len(abuse_livez)}; goal p99 < 200 ms)"
    )
    ratio = statistics.mean(busy) / statistics.mean(idle)
    print(
        f"well-behaved jobs: idle {statistics.mean(idle):.2f} s, under abuse {statistics.mean(busy):.2f} s "
        f"-> {ratio:.2f}x (goal <= 1.5x)"
    )
    for name, probed in (("idle", idle_probe), ("under abuse", busy_probe)):
        mean = {k: statistics.mean(p[k] for p in probed["parts"]) for k in probed["parts"][0]}
        print(
            f"  where a job's time went ({name}): queued {mean['queued']:.2f} s, running {mean['running']:.2f} s "
            f"(generations {mean['generations']:.2f} s, of which worker round trips {mean['worker_roundtrips']:.2f} s)"
        )
    print(
        f"CPU while under abuse ({abuse_seconds:.1f} s, {os.cpu_count()} cores): server {server_cpu:.1f} s, "
        f"attackers {attackers_cpu:.1f} s ({'same priority' if args.same_priority else 'nice 19'})"
    )
    for name, counter in codes.items():
        print(f"{name:10s} {counter}")
    print(
        f"server peak RSS: {peak:.0f} MB (budget: max_concurrent_jobs x max_job_memory_mb + the model); "
        f"attackers {report['peak_rss_mb']:.0f} MB"
        + (f"; workers (fake:0.02 x {args.workers}, Redis) {workers_peak:.0f} MB" if args.workers else "")
        + (f"; runner {runner_peak:.0f} MB" if runner_peak is not None else "")
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        sys.exit(0)
    if sys.argv[1:2] == ["--attack"]:
        print(json.dumps(asyncio.run(attack(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--flood", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--anonymous", type=int, default=4, help="threads sending anonymous 200 MB bodies")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="fake-model workers behind a private Redis (0: the in-process worker, no Redis). With one worker and "
        "three busy tenants a fair share is a third of it, below what the well-behaved job uses alone",
    )
    parser.add_argument(
        "--runner",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --workers: run the jobs in a `nograd runner` process, the API with --no-run-jobs (the README's "
        "advice under heavy load)",
    )
    parser.add_argument(
        "--same-priority",
        action="store_true",
        help="run the attackers at the server's CPU priority (on one small machine they then take CPU from it)",
    )
    asyncio.run(main(parser.parse_args()))
