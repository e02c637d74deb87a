"""The activation memory one forward pass may use (the engine's memory cap), sized from the device a worker serves
on when the operator sets none.

Scores never depend on the cap (`Engine` runs fixed-shape micro-batches; it only decides how many candidates share
a pass), so sizing it from the machine is safe: a larger cap buys fewer, larger passes, which is what keeps an
accelerator busy, and a smaller one keeps a small machine out of swap.

- CUDA: a share of the device's free memory once the models are loaded (`torch.cuda.mem_get_info`, plus what
  PyTorch's caching allocator holds reserved but unused, which it hands out again first).
- CPU: a share of the RAM the kernel reports available (/proc/meminfo MemAvailable) less the model's own weights:
  weights mapped from their safetensors file count as reclaimable page cache in MemAvailable (measured: loading a
  594 MB fp32 model lowered MemAvailable by less than the model), yet evicting them would page them back in on
  every forward. The upper bound is low: unlike a GPU, a CPU runs the matmuls of a pass near full speed once it
  holds a thousand token rows or so, and larger passes then only spill out of the cache (measured: `BOUNDS_MB`).
- One cap for all of a worker's engines, not a share each: a worker scores one batch at a time, so only one
  engine's activations are alive at once (and PyTorch's allocator hands the same blocks to the next one).
- Both: never more than half of the worker's memory budget (NOGRAD_WORKER_MEMORY_MB), which counts the cap as the
  activations of every batch beside its projection matrix and prompts. A cap above it would have every soft-prompt
  batch refused; the API's admission check (`nograd.costs`) counts activations at this same ceiling when the cap
  is automatic, so what it admits, a worker takes.

The arithmetic (`auto_memory_cap`) is pure and takes the free bytes as an argument, so it is tested without a GPU;
`device_free_bytes` reads the device. No torch at import: the API's admission check imports `budget_ceiling_mb`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MB = 2**20
#: Share of free device memory (CUDA) or available RAM (CPU) an automatic cap takes: the rest is headroom for
#: other processes on the device and for the allocator's fragmentation (CUDA), or for the OS, the runner and the
#: optimizers' state (CPU).
FRACTIONS = {"cuda": 0.5, "cpu": 0.25}
#: An automatic cap is clamped into these bounds (MB): below the lower one a pass runs too few rows to amortize
#: the per-pass work; above the upper one one pass would hold more than a population of the largest models ever
#: needs (CUDA), or runs slower (CPU: smollm2-135m fp32, 10 candidates on mr's 32 examples, 2 AVX2 cores: 37.7 s at
#: 64 MB, 27.9 s at 128, 28.7 s at 256, 33.5 s at 512, 31.2 s at 1024; past a few candidates per pass the MLP's
#: intermediate rows spill out of the last-level cache, and the matmuls were already near their rate).
BOUNDS_MB = {"cuda": (256.0, 65536.0), "cpu": (64.0, 256.0)}
#: The most of a worker's memory budget an automatic cap may take: the rest is room for a batch's projection
#: matrix and prompts (`nograd.engine.budget`).
BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class MemoryCap:
    """An engine's memory cap (MB) and why it is that value, for the line a worker logs at start."""

    mb: float
    reason: str

    def describe(self) -> str:
        return f"memory cap {self.mb:,.0f} MB per forward ({self.reason})"


def budget_ceiling_mb(budget_mb: float | None) -> float | None:
    """The largest automatic cap a worker with memory budget `budget_mb` picks (None: no budget, no ceiling)."""
    return None if budget_mb is None else BUDGET_SHARE * budget_mb


def auto_memory_cap(
    device_type: str, *, free_bytes: int, model_bytes: int = 0, budget_mb: float | None = None
) -> MemoryCap:
    """The automatic cap on a device of type `device_type` ('cuda' or 'cpu'; any other is sized like the CPU).

    Args:
        free_bytes: CUDA: the device's free memory after the models were loaded (allocator cache included); CPU:
            MemAvailable.
        model_bytes: the loaded models' weights; subtracted on the CPU only (see the module docstring).
        budget_mb: the worker's memory budget per batch (None: unchecked, no ceiling from it).
    """
    kind = "cuda" if device_type == "cuda" else "cpu"
    fraction, (low, high) = FRACTIONS[kind], BOUNDS_MB[kind]
    if kind == "cuda":
        room, source = free_bytes, f"{free_bytes / MB:,.0f} MB free on the GPU"
    else:
        room = max(0, free_bytes - model_bytes)
        source = f"{free_bytes / MB:,.0f} MB available RAM less {model_bytes / MB:,.0f} MB of weights"
    share = fraction * room / MB
    mb = min(max(share, low), high)
    reason = f"auto: {fraction:.0%} of {source} = {share:,.0f} MB"
    if mb != share:
        reason += f", {'raised' if mb > share else 'lowered'} to the {kind.upper()} bound of {mb:,.0f} MB"
    ceiling = budget_ceiling_mb(budget_mb)
    if ceiling is not None and mb > ceiling:
        mb = ceiling
        reason += f", held to {BUDGET_SHARE:.0%} of the worker memory budget (NOGRAD_WORKER_MEMORY_MB={budget_mb:,.0f})"
    return MemoryCap(mb=mb, reason=reason)


def available_ram_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable from `meminfo`, in bytes: RAM the kernel can give without swapping (free plus reclaimable
    caches). 0 where the file is missing (not Linux) or has no such line: the cap then gets the lower CPU bound."""
    try:
        text = meminfo.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            number, *unit = value.split()
            return int(number) * (1024 if unit == ["kB"] else 1)
    return 0


def device_free_bytes(device) -> int:
    """What `auto_memory_cap` sizes from on `device` (a torch.device): CUDA free memory plus PyTorch's reserved but
    unallocated cache on that device, or the host's available RAM."""
    if device.type != "cuda":
        return available_ram_bytes()
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def model_bytes(model) -> int:
    """Bytes of a torch module's parameters and buffers (shared tensors, such as tied embeddings, once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def resolve_memory_cap(
    memory_cap_mb: float | None, *, device, weights: int, budget_mb: float | None = None
) -> MemoryCap:
    """`memory_cap_mb` as set (the operator's value, kept as is), or, for None, sized from `device` with
    `weights` bytes of loaded models (`auto_memory_cap`)."""
    if memory_cap_mb is not None:
        if memory_cap_mb <= 0:
            raise ValueError(
                f"memory_cap_mb must be more than 0 MB (got {memory_cap_mb}); leave it unset to size it from the device"
            )
        return MemoryCap(mb=float(memory_cap_mb), reason="set by memory_cap_mb")
    return auto_memory_cap(device.type, free_bytes=device_free_bytes(device), model_bytes=weights, budget_mb=budget_mb)
