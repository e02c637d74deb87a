"""A throwaway service stack for the service benches: a private redis-server, `nograd serve` (no embedded worker)
and N `nograd worker` processes, all in a temporary directory and all stopped by `close()`.

Never the shared Redis on 127.0.0.1:6379: `tests/procs.RedisServer` starts one on a free port.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from procs import Proc, RedisServer, answers, free_port, serve, wait_until, worker  # noqa: E402


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (numpy's default); nan for no values."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def create_key(data_dir: Path, tenant: str = "bench") -> str:
    """An API key made with the CLI (`nograd keys create`), as an operator would."""
    out = subprocess.run(
        [sys.executable, "-m", "nograd.cli", "keys", "create", "--tenant", tenant, "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[0]


class Stack:
    """Args:
    model: the model name the workers serve (and the service accepts).
    workers: how many worker processes.
    serve_args: extra `nograd serve` flags (e.g. --batch-size 2).
    auth: False -> `--auth off`; True -> auth on and `self.api_key` is a key made with `nograd keys create`.
    redis_persistent: AOF with fsync on every write (the tests' crash-safe setting) instead of no persistence.
    split_runner: the API process runs no jobs (NOGRAD_RUN_JOBS=false); a second `nograd serve` on the same
        store and Redis (another port, never queried) runs them.
    """

    def __init__(
        self,
        model: str,
        workers: int = 1,
        serve_args: tuple[str, ...] = (),
        *,
        auth: bool = False,
        redis_persistent: bool = False,
        worker_args: tuple[str, ...] = (),
        split_runner: bool = False,
    ):
        self.model, self.n_workers, self.serve_args = model, workers, tuple(serve_args)
        self.auth, self.redis_persistent, self.worker_args = auth, redis_persistent, tuple(worker_args)
        self.split_runner = split_runner
        self.runner = None
        self.tmp = tempfile.TemporaryDirectory(prefix="nograd-bench-")
        self.root = Path(self.tmp.name)
        self.data_dir = self.root / "data"
        self.redis = self.server = None
        self.workers: list = []
        self.api_key: str | None = None
        self.port = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self, worker_timeout: float = 300) -> Stack:
        self.redis = RedisServer(self.root / "redis", persistent=self.redis_persistent).start()
        if self.auth:
            self.api_key = create_key(self.data_dir)
        self.port = free_port()
        extra = list(self.serve_args) + ([] if self.auth else ["--auth", "off"])
        if self.split_runner:
            self.server = self._serve(self.port, extra, {"NOGRAD_RUN_JOBS": "false"})
            self.runner = self._serve(free_port(), extra, {"NOGRAD_RUN_JOBS": "true"})
        else:
            self.server = serve(self.data_dir, self.redis.url, self.port, *extra, models=self.model)
        self.add_workers(self.n_workers, timeout=worker_timeout)
        return self

    def _serve(self, port: int, extra: list[str], env: dict) -> Proc:
        args = [
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(port),
            "--models",
            self.model,
            *extra,
            "--redis-url",
            self.redis.url,
            "--no-embedded-worker",
        ]
        proc = Proc(args, self.root / f"serve-{port}.log", env=env).start()
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz", proc), 60, f"nograd serve on port {port}")
        return proc

    def live_workers(self) -> list[dict]:
        response = httpx.get(f"{self.url}/v1/workers", headers=self.headers, timeout=10)
        response.raise_for_status()
        return [w for w in response.json() if self.model in w["models"]]

    def add_workers(self, n: int, timeout: float = 300) -> None:
        for _ in range(n):
            i = len(self.workers)
            self.workers.append(
                worker(
                    self.redis.url,
                    self.model,
                    self.root / f"worker-{i}.log",
                    "--id",
                    f"bench-worker-{i}",
                    *self.worker_args,
                )
            )
        want = len(self.workers)

        def ready() -> bool:
            for w in self.workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited:\n{w.output()[-3000:]}")
            return len(self.live_workers()) >= want

        wait_until(ready, timeout, f"{want} workers serving {self.model}", interval=0.25)

    def close(self) -> None:
        """Stop everything, each step guarded so one failure does not leave the others running."""
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.terminate()
        deadline = time.monotonic() + 15
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except Exception:
                try:
                    w.kill()
                except Exception:
                    pass
        for server in (self.runner, self.server):
            if server is not None:
                try:
                    server.terminate(timeout=15)
                except Exception:
                    pass
        if self.redis is not None:
            try:
                self.redis.stop()
            except Exception:
                try:
                    self.redis.proc.kill()
                except Exception:
                    pass
        for proc in [*self.workers, self.server, self.runner]:
            fh = getattr(proc, "_fh", None)
            if fh is not None:
                fh.close()
        self.tmp.cleanup()

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for name, server in (("serve", self.server), ("runner", self.runner)):
            if server is not None:
                parts.append(f"--- {name}\n{server.output()[-chars:]}")
        for i, w in enumerate(self.workers):
            parts.append(f"--- worker {i}\n{w.output()[-chars:]}")
        return "\n".join(parts)

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


class Tee:
    """Print and keep the lines, to save the printed output to bench/results/<name>.txt."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
