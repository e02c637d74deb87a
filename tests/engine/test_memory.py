"""Sizing the memory cap from the device (`nograd.engine.memory`): the arithmetic of both paths with the free bytes
passed in (no GPU needed), MemAvailable read from an injected /proc/meminfo, and explicit caps kept as set."""

from __future__ import annotations

import pytest
import torch

from nograd.engine import memory
from nograd.engine.memory import MB, auto_memory_cap, available_ram_bytes, model_bytes, resolve_memory_cap

GB = 1024 * MB


def test_cpu_takes_a_quarter_of_available_ram_less_the_weights():
    cap = auto_memory_cap("cpu", free_bytes=800 * MB, model_bytes=200 * MB)
    assert cap.mb == 0.25 * 600
    assert cap.describe() == (
        "memory cap 150 MB per forward (auto: 25% of 800 MB available RAM less 200 MB of weights = 150 MB)"
    )


@pytest.mark.parametrize(
    "available, bound, word", [(100 * MB, 64, "raised"), (0, 64, "raised"), (64 * GB, 256, "lowered")]
)
def test_cpu_bounds(available, bound, word):
    cap = auto_memory_cap("cpu", free_bytes=available, model_bytes=0)
    assert cap.mb == bound
    assert f"{word} to the CPU bound of {bound:,} MB" in cap.reason


def test_weights_larger_than_available_ram_leave_the_lower_bound():
    assert auto_memory_cap("cpu", free_bytes=GB, model_bytes=3 * GB).mb == memory.BOUNDS_MB["cpu"][0]


def test_cuda_takes_half_the_free_memory_within_bounds_and_ignores_the_weights():
    cap = auto_memory_cap("cuda", free_bytes=40 * GB, model_bytes=16 * GB)  # free is measured after the load
    assert cap.mb == 20 * 1024
    assert cap.reason == "auto: 50% of 40,960 MB free on the GPU = 20,480 MB"
    assert auto_memory_cap("cuda", free_bytes=300 * GB).mb == 65536
    assert auto_memory_cap("cuda", free_bytes=100 * MB).mb == 256


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_never_more_than_half_the_worker_memory_budget(device):
    cap = auto_memory_cap(device, free_bytes=100 * GB, budget_mb=400)
    assert cap.mb == 200
    assert cap.reason.endswith("held to 50% of the worker memory budget (NOGRAD_WORKER_MEMORY_MB=400)")
    assert auto_memory_cap(device, free_bytes=2 * GB, budget_mb=1e6).mb == {"cpu": 256, "cuda": 1024}[device]


def test_mem_available_from_an_injected_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4194304 kB\n")
    assert available_ram_bytes(meminfo) == 4 * GB
    meminfo.write_text("MemTotal:       16000000 kB\n")  # a kernel before 3.14: no such line
    assert available_ram_bytes(meminfo) == 0
    assert available_ram_bytes(tmp_path / "missing") == 0


def test_the_cpu_path_reads_meminfo_and_sizes_from_it(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:    1048576 kB\n")
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: available_ram_bytes(meminfo))
    cap = resolve_memory_cap(None, device=torch.device("cpu"), weights=512 * MB, budget_mb=2048)
    assert cap.mb == 0.25 * (1024 - 512)
    assert "1,024 MB available RAM less 512 MB of weights" in cap.reason


def test_an_explicit_cap_is_kept_and_a_non_positive_one_refused():
    cap = resolve_memory_cap(0.05, device=torch.device("cpu"), weights=0, budget_mb=1)
    assert cap.mb == 0.05 and cap.reason == "set by memory_cap_mb"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="memory_cap_mb must be more than 0 MB .* leave it unset"):
            resolve_memory_cap(bad, device=torch.device("cpu"), weights=0)


def test_model_bytes_counts_tied_weights_once(causal_handle):
    model = causal_handle.model
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tiny.py ties them
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()]}
    assert model_bytes(model) == sum(unique.values())
    assert model_bytes(model) < sum(t.numel() * t.element_size() for t in model.state_dict().values())
