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
    latencies = []
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
    stop.set()
    sampler.join()
    return {"livez": livez, "jobs": latencies}


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


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="nograd-abuse-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "nograd.cli", "serve", "--data-dir", str(root), "--port", str(port)]
        + ["--models", "fake,fake:0.02"],
        cwd=ROOT,
        env=env,
        stdout=open(root / "serve.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
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
            keys = {t: {"Authorization": f"Bearer {k}"} for t, k in raw.items()}

            # Idle: the well-behaved tenant alone.
            idle_probe = await run_probe(url, raw["good"], args.jobs)

            # Under abuse.
            cpu = {"server": cpu_seconds(server.pid), "attackers": cpu_seconds(os.getpid())}
            abuse_started = time.perf_counter()
            stop = asyncio.Event()
            codes = {name: collections.Counter() for name in ("oversized", "anonymous", "flood", "streams")}
            flood_ids = []
            for _ in range(args.flood):
                response = await client.post("/v1/jobs", json=FLOOD_JOB, headers=keys["flood"])
                codes["flood"][response.status_code] += 1
                if response.status_code == 201:
                    flood_ids.append(response.json()["id"])
            target = (await client.post("/v1/jobs", json=FLOOD_JOB, headers=keys["streams"])).json()["id"]
            halt = threading.Event()
            threads = [
                threading.Thread(target=anonymous_bodies, args=(url, halt, codes["anonymous"]), daemon=True)
                for _ in range(args.anonymous)
            ]
            for thread in threads:
                thread.start()
            tasks = [
                asyncio.create_task(oversized(client, keys["huge"], stop, codes["oversized"])),
                *[
                    asyncio.create_task(stream(client, keys["streams"], target, stop, codes["streams"]))
                    for _ in range(args.streams)
                ],
            ]
            busy_probe = await run_probe(url, raw["good"], args.jobs)
            abuse_seconds = time.perf_counter() - abuse_started
            cpu = {
                "server": cpu_seconds(server.pid) - cpu["server"],
                "attackers": cpu_seconds(os.getpid()) - cpu["attackers"],
            }
            stop.set()
            halt.set()
            for job_id in [*flood_ids, target]:
                await client.post(f"/v1/jobs/{job_id}/cancel", headers=keys["flood" if job_id != target else "streams"])
            await asyncio.wait(tasks, timeout=20)
            for thread in threads:
                thread.join(35)
    finally:
        peak = peak_rss_mb(server.pid)
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

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
    print(
        f"CPU while under abuse ({abuse_seconds:.1f} s, {os.cpu_count()} cores): server {cpu['server']:.1f} s, "
        f"attackers (this process) {cpu['attackers']:.1f} s"
    )
    for name, counter in codes.items():
        print(f"{name:10s} {dict(counter)}")
    print(
        f"server peak RSS: {peak:.0f} MB (budget: max_concurrent_jobs x max_job_memory_mb + the model); "
        f"bench client {peak_rss_mb(os.getpid()):.0f} MB"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--flood", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--anonymous", type=int, default=4, help="threads sending anonymous 200 MB bodies")
    asyncio.run(main(parser.parse_args()))
