"""The queue's and the store's own ceilings: batches/s through ONE Redis stream, generations/s one store sustains.

Queue: a private redis-server, N `nograd worker --model fake` processes (the fake engine with zero latency: no
sleep, so a worker's time is all queue and wire work) and --producers producer processes. A producer is a job
runner without the optimizer: --jobs asyncio tasks on one event loop, each a simulated job that evaluates one
population after another through `QueueClient` (the runner's own queue client, unchanged): popsize 20 split into
batches of --batch-size 1, so every generation is 20 stream entries of one 500-dimensional candidate each, with
fresh candidates every generation (batch ids are content hashes: a repeated batch would be answered from its
stored result). Each simulated job keeps its 20 batches in flight until the last result is back, as a real job
does, so up to producers x jobs x 20 batches are outstanding: enough to keep 8 workers busy.

Measured per worker count (the workers are added to the same Redis, 1 -> 2 -> 4 -> 8), after --warmup seconds, in
a --window seconds window: batches/s = batch results written inside the window (the worker's `finished_at`) /
window; generation round trip = submit of a population's batches -> all its results back at the producer (what a
job waits per generation); batch latency = a batch's submit -> its result written by a worker; CPU % (of one
core) from /proc/PID/stat for redis-server, the workers and the producers, the machine's busy % from /proc/stat
(both cores; the rest is other processes on this shared machine) and the 1-minute load average. CPU ms per batch
per role tells which one saturates first and what each would sustain with a core of its own (an extrapolation,
labelled so). The largest worker counts are measured again with Redis as deployed (AOF, fsync always: the
docker-compose and Kubernetes setting).

Store: `Store.save_progress` (the runner's one write per generation: checkpoint + history entry + summary columns,
one fenced transaction) from --store-threads threads, each looping over its own claimed jobs, for --store-seconds
seconds, on SQLite (a file in a temporary directory, the default store: WAL, synchronous=NORMAL) and on PostgreSQL
(--postgres conninfo; a fresh database, dropped afterwards; skipped when no server answers). The checkpoint and
history entry are real: a BBT search (dim 500, popsize 20, mr, fake engine) run in this process to the end of the
service's default budget (600 calls, generation 30); the checkpoint grows with the generations (its optimizer state
is a replayable log: one row of losses and one digest per generation), so the checkpoint of BBT's budget (8000
calls, generation 400) is that one with its log extended to 400 rows (207 KB; a real run to generation 400 gave 209 KB).

Usage: .venv/bin/python bench/queue_ceiling.py [--workers 1 2 4 8] [--aof-workers 4 8] [--window 10]
       [--producers 2] [--jobs 8] [--store-threads 1 4 16] [--postgres "host=127.0.0.1 user=postgres"]
Whole populations per batch, the queue only (bench/results/queue_ceiling-batch20.txt):
       .venv/bin/python bench/queue_ceiling.py --batch-size 20 --workers 1 4 --aof-workers 4 --store-threads \
           --out bench/results/queue_ceiling-batch20.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _stack import ROOT, Tee, percentile  # noqa: E402
from procs import RedisServer, wait_until, worker  # noqa: E402

from nograd.clients.types import EvalRequest  # noqa: E402
from nograd.config import RunConfig  # noqa: E402
from nograd.engine import FakeEngine  # noqa: E402
from nograd.pipeline import resolve_run  # noqa: E402
from nograd.search import prompt_spec  # noqa: E402
from nograd.service.queue import RedisQueue  # noqa: E402
from nograd.service.queue.client import QueueClient  # noqa: E402

MODEL = "fake"  # zero latency: the engine does no sleep
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- producer process
class RecordingQueue(RedisQueue):
    """The runner's RedisQueue, unchanged, noting each batch's submit time and each result's write time."""

    def __init__(self, url: str):
        super().__init__(url)
        self.submitted: dict[str, float] = {}
        self.batches: list[tuple[float, float]] = []  # (submitted, result written by the worker), epoch seconds

    async def submit(self, batches):
        now = time.time()
        for batch in batches:
            self.submitted.setdefault(batch.id, now)
        await super().submit(batches)

    async def wait(self, job_id, batch_ids, timeout=None):
        results = await super().wait(job_id, batch_ids, timeout)
        for batch_id, result in results.items():
            self.batches.append((self.submitted.pop(batch_id), result.finished_at))
        return results


async def produce(args) -> None:
    """Run --jobs simulated jobs until stdin closes; write their timings to --out as JSON."""
    config, data = resolve_run(
        RunConfig(method="bbt", task="mr", model=MODEL, budget=10**6, seed=0, dim=args.dim, popsize=args.popsize)
    )
    spec = prompt_spec(config, "cat")
    queue = RecordingQueue(args.redis_url)
    info = FakeEngine().describe()
    generations: list[tuple[float, float]] = []  # (finished, round trip seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_stdin() -> None:
        sys.stdin.read()  # the parent closes our stdin to stop us
        loop.call_soon_threadsafe(stop.set)

    async def job(i: int) -> None:
        job_id = f"ceiling-{args.tag}-{i}-{uuid.uuid4().hex[:6]}"
        client = QueueClient(queue, job_id, MODEL, info, batch_size=args.batch_size)
        rng = np.random.default_rng([args.seed, i])
        generation = 0
        while not stop.is_set():
            z = rng.normal(size=(args.popsize, args.dim))
            request = EvalRequest(data.spec, data.train, spec, z=z, loss=config.loss, generation=generation)
            started = time.perf_counter()
            await client.evaluate(request)
            generations.append((time.time(), time.perf_counter() - started))
            generation += 1
        await queue.forget_job(job_id)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    tasks = [asyncio.create_task(job(i)) for i in range(args.jobs)]
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    await queue.close()
    Path(args.out).write_text(json.dumps({"batches": queue.batches, "generations": generations}))


# ---------------------------------------------------------------- measurement
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (not its children), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5), after pid and comm


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def live_workers(url: str) -> int:
    async def go() -> int:
        queue = RedisQueue(url)
        try:
            return len(await queue.workers())
        finally:
            await queue.close()

    return asyncio.run(go())


class QueueBench:
    """One private Redis and the workers added to it; `measure` runs the producers against the current workers."""

    def __init__(self, root: Path, args, persistent: bool):
        self.root, self.args, self.persistent = root, args, persistent
        self.redis = RedisServer(root / ("redis-aof" if persistent else "redis"), persistent=persistent).start()
        self.workers: list = []

    def scale_to(self, n: int) -> None:
        while len(self.workers) < n:
            i = len(self.workers)
            tag = "aof" if self.persistent else "mem"
            log = self.root / f"worker-{tag}-{i}.log"
            self.workers.append(worker(self.redis.url, MODEL, log, "--id", f"ceiling-{tag}-{i}"))

        def ready() -> bool:
            for w in self.workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited:\n{w.output()[-3000:]}")
            return live_workers(self.redis.url) >= n

        wait_until(ready, 120, f"{n} workers", interval=0.25)

    def measure(self) -> dict:
        args, n = self.args, len(self.workers)
        tag = f"{'aof' if self.persistent else 'mem'}{n}"
        outs = [self.root / f"producer-{tag}-{k}.json" for k in range(args.producers)]
        logs = [open(self.root / f"producer-{tag}-{k}.log", "wb") for k in range(args.producers)]  # noqa: SIM115
        producers = [
            subprocess.Popen(
                [sys.executable, __file__, "_produce", "--redis-url", self.redis.url, "--out", str(out)]
                + ["--jobs", str(args.jobs), "--popsize", str(args.popsize), "--dim", str(args.dim)]
                + ["--batch-size", str(args.batch_size), "--seed", str(k), "--tag", tag],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[k],
                text=True,
            )
            for k, out in enumerate(outs)
        ]
        try:
            for p in producers:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a producer did not start: {self._producer_log(tag, producers.index(p))}")
            time.sleep(args.warmup)
            pids = {
                "redis": [self.redis.proc.pid],
                "workers": [w.proc.pid for w in self.workers],
                "producers": [p.pid for p in producers],
            }
            cpu0 = {role: sum(cpu_seconds(pid) for pid in group) for role, group in pids.items()}
            busy0, total0, t1 = *machine_ticks(), time.time()
            time.sleep(args.window)
            cpu1 = {role: sum(cpu_seconds(pid) for pid in group) for role, group in pids.items()}
            busy1, total1, t2 = *machine_ticks(), time.time()
            load = os.getloadavg()[0]
        finally:
            for p in producers:
                p.stdin.close()
            for k, p in enumerate(producers):
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    raise RuntimeError(f"a producer did not stop: {self._producer_log(tag, k)}") from None
                finally:
                    logs[k].close()
        if any(p.returncode for p in producers):
            k = next(k for k, p in enumerate(producers) if p.returncode)
            raise RuntimeError(f"a producer failed: {self._producer_log(tag, k)}")
        batches, generations = [], []
        for out in outs:
            recorded = json.loads(out.read_text())
            batches += recorded["batches"]
            generations += recorded["generations"]
        in_window = [(s, f) for s, f in batches if t1 < f <= t2]
        window = t2 - t1
        done = len(in_window)
        return {
            "workers": n,
            "rate": done / window,
            "batches": done,
            "gen_rtt": [rtt for finished, rtt in generations if t1 < finished <= t2],
            "batch_latency": [f - s for s, f in in_window],
            "cpu": {role: (cpu1[role] - cpu0[role]) / window for role in pids},
            "cpu_per_batch": {role: (cpu1[role] - cpu0[role]) / max(done, 1) for role in pids},
            "machine": (busy1 - busy0) / max(total1 - total0, 1),
            "load": load,
        }

    def _producer_log(self, tag: str, k: int) -> str:
        log = self.root / f"producer-{tag}-{k}.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"

    def close(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()
            w._fh.close()
        self.redis.stop()


def queue_rows(out: Tee, args, root: Path) -> list[dict]:
    rows = []
    for persistent, counts in ((False, args.workers), (True, args.aof_workers)):
        if not counts:
            continue
        bench = QueueBench(root, args, persistent)
        try:
            for n in sorted(counts):
                bench.scale_to(n)
                row = bench.measure()
                row["redis"] = "AOF always" if persistent else "no persistence"
                rows.append(row)
                out(
                    f"  {row['redis']:14s} {n} worker(s): {row['rate']:7.0f} batches/s, redis CPU "
                    f"{100 * row['cpu']['redis']:.0f}%, machine busy {100 * row['machine']:.0f}%"
                )
        finally:
            bench.close()
    return rows


def print_queue(out: Tee, rows: list[dict], args) -> None:
    out("")
    out(
        f"{'redis':14s} {'workers':>7s} {'batches/s':>9s} {'cand/s':>7s} {'gen rtt p50/p99 ms':>18s} "
        f"{'batch p50/p99 ms':>16s} {'redis CPU':>9s} {'workers CPU':>11s} {'per worker':>10s} {'producers':>9s} "
        f"{'machine':>7s} {'others':>6s} {'load1':>5s}"
    )
    for r in rows:
        cpu, n = r["cpu"], r["workers"]
        others = max(0.0, r["machine"] * os.cpu_count() - sum(cpu.values()))
        gen = f"{1000 * percentile(r['gen_rtt'], 50):.0f}/{1000 * percentile(r['gen_rtt'], 99):.0f}"
        lat = f"{1000 * percentile(r['batch_latency'], 50):.1f}/{1000 * percentile(r['batch_latency'], 99):.1f}"
        out(
            f"{r['redis']:14s} {n:7d} {r['rate']:9.0f} {r['rate'] * args.batch_size:7.0f} {gen:>18s} {lat:>16s} "
            f"{100 * cpu['redis']:8.0f}% {100 * cpu['workers']:10.0f}% {100 * cpu['workers'] / n:9.0f}% "
            f"{100 * cpu['producers']:8.0f}% {100 * r['machine']:6.0f}% {100 * others:5.0f}% {r['load']:5.2f}"
        )
    out(
        f"(CPU % of one core; machine: busy share of all {os.cpu_count()} cores; others: what the rest of this shared "
        "machine used meanwhile, % of one core; batch = submit -> result written)"
    )
    out("")
    out(f"{'redis':14s} {'workers':>7s}  CPU ms per batch:  {'redis':>6s} {'worker':>7s} {'producer':>8s}")
    for r in rows:
        per = r["cpu_per_batch"]
        out(
            f"{r['redis']:14s} {r['workers']:7d}  {'':18s} {1000 * per['redis']:6.3f} {1000 * per['workers']:7.3f} "
            f"{1000 * per['producers']:8.3f}"
        )
    for redis in ("no persistence", "AOF always"):
        mine = [r for r in rows if r["redis"] == redis]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["rate"])
        per = best["cpu_per_batch"]
        redis_cpu = best["cpu"]["redis"]
        if redis_cpu >= 0.9:
            first = "redis-server (single-threaded) is at a full core: the stream itself is the limit"
        elif best["machine"] >= 0.95:
            first = (
                f"the {os.cpu_count()} cores are full while redis-server uses {100 * redis_cpu:.0f}% of one: the "
                f"Python workers ({1000 * per['workers']:.2f} CPU ms per batch) and producers "
                f"({1000 * per['producers']:.2f}) saturate the machine first"
            )
        else:
            first = (
                f"neither redis-server ({100 * redis_cpu:.0f}% of a core) nor the machine "
                f"({100 * best['machine']:.0f}% busy) is full: the rest is waiting (round trips between the "
                "processes; with AOF always, Redis's fsync before it answers a write); more load (--jobs, "
                "--producers) may go further"
            )
        out("")
        out(f"{redis}: peak {best['rate']:.0f} batches/s with {best['workers']} workers; {first}.")
        out(
            f"  extrapolated, each on a core of its own: one redis-server ~{1 / per['redis']:.0f} batches/s "
            f"(1 / its CPU per batch), one worker process ~{1 / per['workers']:.0f}, one producer (runner loop) "
            f"~{1 / per['producers']:.0f}"
        )


# ---------------------------------------------------------------- store
def real_state(generations: int) -> tuple[str, dict]:
    """A BBT search's checkpoint text (as the runner writes it) and history entry after `generations`."""
    from nograd.clients.local import LocalClient
    from nograd.methods import make_search
    from nograd.service.checkpoints import dump_checkpoint

    async def go():
        config, data = resolve_run(
            RunConfig(method="bbt", task="mr", model=MODEL, budget=20 * generations, seed=0, dim=500, popsize=20)
        )
        client = LocalClient(FakeEngine())
        search = make_search(config, data.spec, data.train, data.dev, (await client.describe()).n_layers)
        await search.start(client)
        entry = None
        while not search.done:
            entry = await search.step(client)
        entry.update(time=time.time(), roundtrip_seconds=0.01)
        return dump_checkpoint(search.state_dict()), entry

    return asyncio.run(go())


def longer_state(checkpoint: str, generations: int) -> str:
    """`checkpoint` with its optimizer's replay log (one row of losses, one candidate digest and one row of candidate
    fingerprints per generation: all that grows) cycled out to `generations` rows: the size and shape of the
    checkpoint of a longer run, without running CMA-ES at d = 500 for hundreds of generations here (not a state to
    resume from; the store never reads it)."""
    state = json.loads(checkpoint)
    optimizer = state["optimizer"]
    digests = optimizer["candidate_sha256"]
    for key in ("losses", "candidate_fingerprints"):
        rows = optimizer[key]["__ndarray__"]
        optimizer[key]["__ndarray__"] = [rows[i % len(rows)] for i in range(generations)]
        optimizer[key]["shape"][0] = generations
    optimizer["candidate_sha256"] = [digests[i % len(digests)] for i in range(generations)]
    optimizer["generation"] = state["generation"] = generations
    state["calls"] = generations * optimizer["losses"]["shape"][1]
    return json.dumps(state)


def store_rate(url: str, checkpoint: str, entry: dict, threads: int, seconds: float, jobs_per_thread: int = 2):
    """save_progress calls per second from `threads` threads, each over its own `jobs_per_thread` claimed jobs."""
    from nograd.service.store import Store

    store = Store(url)
    try:
        ids = [
            store.create_job(
                tenant="bench", method="bbt", task="mr", dataset_id=None, model=MODEL, config={}, budget=10**6
            )["id"]
            for _ in range(threads * jobs_per_thread)
        ]
        claimed = [j["id"] for j in store.claim_jobs("bench", 3600, len(ids))]
        if sorted(claimed) != sorted(ids):
            raise RuntimeError("could not claim the bench jobs")
        latencies: list[list[float]] = [[] for _ in range(threads)]
        start, stop = threading.Barrier(threads + 1), threading.Event()

        def loop(k: int) -> None:
            mine = ids[k * jobs_per_thread : (k + 1) * jobs_per_thread]
            start.wait()
            generation = 0
            while not stop.is_set():
                generation += 1
                for job_id in mine:
                    began = time.perf_counter()
                    ok = store.save_progress(
                        job_id,
                        "bench",
                        checkpoint=checkpoint,
                        entry={**entry, "generation": generation},
                        calls=20 * generation,
                        generation=generation,
                        best_train_loss=entry["best_loss"],
                        best_dev_metric=0.7,
                    )
                    if not ok:
                        raise RuntimeError("lost a lease in the store bench")
                    latencies[k].append(time.perf_counter() - began)

        pool = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        cpu0 = time.process_time()
        start.wait()
        began = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in pool:
            t.join()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu0
    finally:
        store.close()
    every = [x for lat in latencies for x in lat]
    return {"rate": len(every) / wall, "p50": percentile(every, 50), "p99": percentile(every, 99), "cpu": cpu / wall}


def postgres_database(conninfo: str):
    """(SQLAlchemy URL of a fresh database, drop function), or (None, reason) when no server answers."""
    import psycopg

    name = f"nograd_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(f"{conninfo} dbname=postgres connect_timeout=3", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        return None, str(exc).strip()
    params = dict(part.split("=", 1) for part in conninfo.split())
    url = f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}/{name}"

    def drop() -> None:
        with psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def store_rows(out: Tee, args, root: Path) -> list[dict]:
    checkpoint, entry = real_state(30)
    states = {30: (checkpoint, entry), 400: (longer_state(checkpoint, 400), entry)}
    out(
        f"  checkpoint of a real BBT search (dim 500, popsize 20) at generation 30 (600 calls, the service's default "
        f"budget): {len(checkpoint) / 1024:.0f} KB; its replay log extended to generation 400 (8000 calls, BBT's "
        f"budget): {len(states[400][0]) / 1024:.0f} KB; history entry {len(json.dumps(entry))} B"
    )
    backends = [("sqlite", f"sqlite:///{root / 'store.db'}", None)]
    pg_url, pg_drop = postgres_database(args.postgres)
    if pg_url is None:
        out(f"  postgresql: skipped ({pg_drop})")
    else:
        backends.append(("postgresql", pg_url, pg_drop))
    rows = []
    for name, url, drop in backends:
        try:
            for gens, (checkpoint, entry) in states.items():
                for threads in args.store_threads:
                    row = store_rate(url, checkpoint, entry, threads, args.store_seconds)
                    row.update(backend=name, threads=threads, kb=len(checkpoint) / 1024, generation=gens)
                    rows.append(row)
        finally:
            if drop is not None:
                drop()
    return rows


def print_store(out: Tee, rows: list[dict]) -> None:
    out("")
    header = f"{'store':10s} {'checkpoint':>12s} {'threads':>7s} {'gens/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}"
    out(f"{header} {'bench CPU':>9s}")
    for r in rows:
        out(
            f"{r['backend']:10s} {r['kb']:5.0f} KB g{r['generation']:<4d} {r['threads']:7d} {r['rate']:7.0f} "
            f"{1000 * r['p50']:7.1f} {1000 * r['p99']:7.1f} {100 * r['cpu']:8.0f}%"
        )
    out("(gens/s = save_progress transactions per second, one per generation of one job; bench CPU = this")
    out(" process, SQLAlchemy + driver + SQLite itself, % of one core)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_produce"]:
        parser = argparse.ArgumentParser()
        for flag in ("--redis-url", "--out", "--tag"):
            parser.add_argument(flag, required=True)
        for flag in ("--jobs", "--popsize", "--dim", "--batch-size", "--seed"):
            parser.add_argument(flag, type=int, required=True)
        asyncio.run(produce(parser.parse_args(argv[1:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--aof-workers", type=int, nargs="*", default=[4, 8], help="again with AOF fsync always")
    parser.add_argument("--producers", type=int, default=2, help="producer processes (simulated runners)")
    parser.add_argument("--jobs", type=int, default=8, help="simulated jobs per producer")
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--dim", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--store-threads", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--store-seconds", type=float, default=5.0)
    parser.add_argument("--postgres", default="host=127.0.0.1 user=postgres", help="libpq conninfo, no dbname")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "queue_ceiling.txt"))
    args = parser.parse_args(argv)

    out = Tee()
    started = time.monotonic()
    per_generation = -(-args.popsize // args.batch_size)
    out(
        f"queue ceiling: one Redis stream (model {MODEL}: zero latency), {args.producers} producer processes x "
        f"{args.jobs} simulated jobs (QueueClient, popsize {args.popsize}, dim {args.dim}, batch size "
        f"{args.batch_size}: {per_generation} batches per generation, up to "
        f"{args.producers * args.jobs * per_generation} in flight); {args.window:.0f} s window after "
        f"{args.warmup:.0f} s; {os.cpu_count()} CPUs, 1-min load avg at start {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="nograd-ceiling-") as tmp:
        root = Path(tmp)
        rows = queue_rows(out, args, root)
        print_queue(out, rows, args)
        store = []
        if args.store_threads:  # `--store-threads` with no values: the queue only
            out("")
            out(f"store: Store.save_progress from {args.store_threads} threads, {args.store_seconds:.0f} s each")
            store = store_rows(out, args, root)
            print_store(out, store)
    best = max((r for r in rows if r["redis"] == "AOF always"), key=lambda r: r["rate"], default=None)
    best = best or max(rows, key=lambda r: r["rate"])
    out("")
    out(
        f"side by side (this machine): one Redis stream {best['rate']:.0f} batches/s ({best['redis']}, "
        f"{best['workers']} workers) = {best['rate'] / per_generation:.0f} generations/s of popsize {args.popsize} "
        f"at batch size {args.batch_size}"
    )
    for r in store:
        if r["generation"] == 30 and r["threads"] == max(args.store_threads):
            out(
                f"  one {r['backend']} store: {r['rate']:.0f} generations/s ({r['threads']} threads, "
                f"{r['kb']:.0f} KB checkpoint) = {r['rate'] / (best['rate'] / per_generation):.1f}x the stream's "
                "generations/s"
            )
    out(f"(whole run {time.monotonic() - started:.0f} s)")
    out.save(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
