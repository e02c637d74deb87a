"""`dtype auto`: bf16 only where the device computes it natively (emulated bf16 on a CPU is several times slower
than fp32), and the dtype a model was loaded in is what its engine reports and saved prompts record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nograd.engine import models
from nograd.engine.models import native_bf16_cpu, resolve_dtype


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_is_bf16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(models, "native_bf16_cpu", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) is expected
    assert resolve_dtype("auto") is expected  # no device: the CPU's rule


def test_native_bf16_reads_this_cpus_flags():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        assert native_bf16_cpu() is False
        return
    assert native_bf16_cpu() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_explicit_dtypes_and_a_clear_error():
    assert resolve_dtype("fp32") is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(Exception, match="use one of auto, bf16, fp16, fp32"):
        resolve_dtype("int8")


def test_the_default_run_config_and_worker_use_auto():
    from nograd.config import RunConfig
    from nograd.service.settings import Settings

    assert RunConfig().dtype == "auto" and Settings().dtype == "auto"
