"""A worker's memory cap: unset it is sized from the device once the models are loaded, and the worker says at start
what it picked and why; a set one is kept; a zero or negative one is refused with the fix; the API admits jobs
against the largest cap an automatic one can be."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError
from tiny import save_small_llama

from nograd.costs import MB, Limits
from nograd.engine import memory
from nograd.service.settings import Settings
from nograd.service.worker import engines_from_settings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, causal_tokenizer):
    return save_small_llama(tmp_path_factory.mktemp("cap") / "small-llama", causal_tokenizer, seed=2)


def _cap_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "memory cap" in r.getMessage()]


def test_the_worker_says_at_start_which_cap_it_sized_from_the_ram(model_dir, tmp_path, monkeypatch, caplog):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8388608 kB\nMemAvailable:     786432 kB\n")
    read = memory.available_ram_bytes
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: read(meminfo))
    settings = Settings(data_dir=tmp_path, models=[model_dir], device="cpu", dtype="fp32")
    assert settings.memory_cap_mb is None
    with caplog.at_level(logging.INFO, logger="nograd"):
        engines = engines_from_settings(settings)
    weights = memory.model_bytes(engines[model_dir].handle.model)
    share = 0.25 * (768 * MB - weights) / MB  # under the CPU bound of 256 MB
    assert _cap_lines(caplog) == [
        f"{model_dir} on cpu: memory cap {share:,.0f} MB per forward (auto: 25% of 768 MB available RAM less "
        f"{weights / MB:,.0f} MB of weights = {share:,.0f} MB)"
    ]
    assert engines[model_dir].memory_cap == share * MB  # the cap the engine chunks its passes by


def test_an_automatic_cap_is_held_to_half_the_worker_memory_budget(model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 64 * 1024 * MB)
    settings = Settings(data_dir=tmp_path, models=[model_dir], device="cpu", dtype="fp32", worker_memory_mb=300)
    with caplog.at_level(logging.INFO, logger="nograd"):
        engines_from_settings(settings)
    (line,) = _cap_lines(caplog)
    assert line.startswith(f"{model_dir} on cpu: memory cap 150 MB per forward (auto: 25% of 65,536 MB")
    assert line.endswith("held to 50% of the worker memory budget (NOGRAD_WORKER_MEMORY_MB=300))")


def test_a_set_cap_is_kept_and_said(model_dir, tmp_path, caplog):
    settings = Settings(data_dir=tmp_path, models=[model_dir], device="cpu", dtype="fp32", memory_cap_mb=64)
    with caplog.at_level(logging.INFO, logger="nograd"):
        engines = engines_from_settings(settings)
    assert _cap_lines(caplog) == [f"{model_dir} on cpu: memory cap 64 MB per forward (set by memory_cap_mb)"]
    assert engines[model_dir].memory_cap == 64 * MB


@pytest.mark.parametrize("bad", [0, -5, float("nan")])
def test_a_cap_that_is_not_positive_is_refused_with_the_fix(bad):
    with pytest.raises(ValidationError, match="memory_cap_mb must be more than 0 MB .* leave it unset"):
        Settings(memory_cap_mb=bad)


def test_the_cap_reads_the_environment(monkeypatch):
    monkeypatch.setenv("NOGRAD_MEMORY_CAP_MB", "512")
    assert Settings().memory_cap_mb == 512
    monkeypatch.setenv("NOGRAD_MEMORY_CAP_MB", "-1")
    with pytest.raises(ValidationError, match="memory_cap_mb must be more than 0 MB"):
        Settings()


def test_the_api_admits_against_the_largest_automatic_cap():
    assert Limits.from_settings(Settings(worker_memory_mb=2048)).activations == 1024 * MB
    assert Limits.from_settings(Settings(memory_cap_mb=256)).activations == 256 * MB


@pytest.mark.parametrize("command", [["worker", "--redis-url", "redis://x"], ["serve"]])
def test_the_worker_and_serve_commands_pass_the_cap_or_none(command, monkeypatch):
    from nograd.cli import build_parser
    from nograd.cli.service import _settings

    monkeypatch.delenv("NOGRAD_MEMORY_CAP_MB", raising=False)
    parser = build_parser()
    assert _settings(parser.parse_args(command)).memory_cap_mb is None
    assert _settings(parser.parse_args([*command, "--memory-cap-mb", "96"])).memory_cap_mb == 96
