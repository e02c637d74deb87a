"""What a bench ran on, saved with its results: wall times and throughput are only comparable between runs on the
same kind of machine (the v3 quality tables were measured on two different CPUs), and even one CPU model can run at
different speeds on different machines (two 2-core EPYC sessions ran the same 1000-call runs 2x apart), so the
record also names the boot it ran in."""

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


def boot_id() -> str | None:
    """The kernel's random id of this boot (None where there is none): two runs with the same id ran on one machine
    without a reboot in between, so their wall times can be divided. It identifies nothing outside that boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def host() -> dict:
    """The CPU, whether it computes bf16 natively, torch's threads, the CUDA device (None without one) and the boot
    (`boot_id`)."""
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "native_bf16": native_bf16_cpu(),
        "threads": torch.get_num_threads(),
        "cuda": cuda,
        "boot_id": boot_id(),
    }
