"""What a bench ran on, saved with its results: wall times and throughput are only comparable between runs on the
same kind of machine (the v3 quality tables were measured on two different CPUs)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from nograd.engine.models import native_bf16_cpu


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the architecture where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict:
    """The CPU, whether it computes bf16 natively, torch's threads and the CUDA device (None without one)."""
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "native_bf16": native_bf16_cpu(), "threads": torch.get_num_threads(), "cuda": cuda}
