"""Engine throughput vs the reference one-forward-per-candidate loop, measured side by side in one run.

Shapes as in BBT: 50 prompt tokens, 32 training examples (mr, 16-shot), population 20, same model and dtype.
- reference loop: for each candidate, one forward of the full causal LM over prompt + example (all 32 examples
  padded together), LM head over the whole sequence, label words read at the scored position. Its cost is the same
  for every candidate, so it is timed on --loop-candidates of them and reported per (candidate, example) pair;
- the engine, the whole population in one `evaluate` (prefix reuse, label-row head, memory-capped chunks), as:
  `hf` (the Hugging Face forward, the engine before the fused one), `fused` (`nograd.engine.fused`), and with
  --compile `fused+compile` (its first call, which compiles, reported apart and amortized over a 600-call job),
  all at the cap `nograd.engine.memory` sizes from this machine (or --memory-cap-mb);
- achieved FLOP/s of the best engine against this machine's measured matmul peak in the same dtype;
- a profile of the best engine's population: the share of its time in matmuls, attention and the rest;
- --bbtv2: BBTv2's frozen-layer reuse, with vs without, averaged over varying layers 0, 10, 20;
- --cap-sweep 64,128,256,512,1024: only the fused engine's time for 10 candidates at each memory cap.
Writes --json (default bench/results/throughput.json) with `speedup`, `engine_pairs_per_s`, `loop_pairs_per_s`,
`achieved_gflops`, `peak_gflops`, `peak_fraction` and every variant, so runs can be compared.

Usage: .venv/bin/python bench/throughput.py [--dtype auto|fp32|bf16] [--compile] [--bbtv2]
(auto: bf16 where the CPU computes it natively, else fp32; on a CPU without AVX512-BF16/AMX a bf16 matmul runs
hundreds of times slower than fp32, and the bench says so instead of running for hours.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _host import host  # noqa: E402

from nograd.clients.types import EvalRequest, ProjectionSpec, PromptSpec  # noqa: E402
from nograd.engine import Engine, load_model  # noqa: E402
from nograd.engine.memory import model_bytes, resolve_memory_cap  # noqa: E402
from nograd.engine.models import native_bf16_cpu  # noqa: E402
from nograd.pipeline import task_spec, to_examples  # noqa: E402
from nograd.tasks import get_task  # noqa: E402

POPULATION, N_TOKENS, DIM = 20, 50, 500
JOB_POPULATIONS = 30  # a 600-call BBT job at popsize 20: what a compile is amortized over


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def reference_loop(engine: Engine, request: EvalRequest) -> np.ndarray:
    """What the reference code does by default: one full forward per candidate, full LM head."""
    h = engine.handle
    layout = engine.layout(request)
    prompts = engine.prompts(request, layout)
    lp = layout.prefix_ids.numel()
    ids = torch.cat([layout.prefix_ids.expand(layout.n_examples, -1), layout.body_ids], dim=1)
    mask = torch.cat([torch.ones(layout.n_examples, lp, dtype=torch.long), layout.body_mask.long()], dim=1)
    out = []
    with torch.inference_mode():
        for p in range(prompts.population):
            emb = h.embedding(ids).clone()
            emb[:, layout.slots] += prompts.embed[p].to(h.dtype)
            logits = h.model(inputs_embeds=emb, attention_mask=mask).logits  # (E, L, vocab)
            picked = logits[torch.arange(layout.n_examples), lp + layout.score_pos]
            out.append(picked[:, layout.label_ids].float().numpy())
    return np.stack(out)


def matmul_peak(dtype: torch.dtype, size: int = 2048) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    seconds = _timed(lambda: a @ b, 3)
    return 2 * size**3 / seconds


def engine_flops(engine: Engine, request: EvalRequest) -> float:
    """Matmul FLOPs the engine performs: prefix once per candidate + body per (candidate, example)."""
    h = engine.handle
    layout = engine.layout(request)
    per_token = 2 * sum(p.numel() for n, p in h.base.named_parameters() if "embed" not in n)
    lp = layout.prefix_ids.numel()
    body_tokens = int(layout.body_mask.sum())
    population = request.population
    attention = 4 * h.n_layers * h.hidden_size * (body_tokens * (lp + layout.body_ids.shape[1] / 2))
    return population * (lp * per_token + body_tokens * per_token + attention)


def profile_shares(engine: Engine, request: EvalRequest) -> dict[str, float]:
    """Share of one population's CPU time by kind of op (torch.profiler self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.evaluate(request)
    shares = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name = event.key
        kind = (
            "matmul"
            if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
            else "attention"
            if "scaled_dot_product" in name or "flash_attention" in name
            else "other"
        )
        shares[kind] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where native, else fp32), fp32 or bf16")
    parser.add_argument("--loop-candidates", type=int, default=3, help="candidates the reference loop is timed on")
    parser.add_argument("--compile", action="store_true", help="also time the fused forward under torch.compile")
    parser.add_argument("--bbtv2", action="store_true", help="also time BBTv2's frozen-layer reuse")
    parser.add_argument("--memory-cap-mb", type=float, help="the engines' cap (default: sized from this machine)")
    parser.add_argument(
        "--cap-sweep", help="only time the fused engine on 10 candidates at these caps (MB, comma-separated)"
    )
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = parser.parse_args(argv)

    dtype = args.dtype
    if dtype == "auto":
        dtype = "bf16" if native_bf16_cpu() else "fp32"
    handle = load_model("smollm2-135m", dtype=dtype)
    torch_dtype = handle.dtype
    peak = matmul_peak(torch_dtype)
    machine = host()
    print(
        f"model smollm2-135m {dtype}, {N_TOKENS} prompt tokens, population {POPULATION}, torch threads "
        f"{machine['threads']}, CPU {machine['cpu']}, native bf16 {machine['native_bf16']}"
    )
    print(f"measured {dtype} matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    if torch_dtype == torch.bfloat16 and not native_bf16_cpu():
        print("this CPU has no native bf16: bf16 runs emulated, far below fp32; use --dtype fp32 (auto picks it)")
        return 2

    task = get_task("mr")
    train, _ = task.few_shot(16, 0)
    spec, examples = task_spec(task), to_examples(task, train)
    z = np.random.default_rng(0).normal(size=(POPULATION, DIM))
    prompt = PromptSpec(mode="add", n_tokens=N_TOKENS, projection=ProjectionSpec(dim=DIM))
    request = EvalRequest(spec, examples, prompt, z=z)
    warm = EvalRequest(spec, examples, prompt, z=z[:2])
    pairs = POPULATION * len(examples)
    auto_cap = resolve_memory_cap(None, device=handle.device, weights=model_bytes(handle.model), budget_mb=None)

    if args.cap_sweep:  # how the CPU bound of nograd.engine.memory was chosen
        ten = EvalRequest(spec, examples, prompt, z=z[:10])
        for cap_mb in (float(c) for c in args.cap_sweep.split(",")):
            engine = Engine(handle, compile=False, memory_cap_mb=cap_mb)
            engine.evaluate(warm)
            print(f"cap {cap_mb:6,.0f} MB: {_timed(lambda e=engine: e.evaluate(ten), 1):6.2f} s per 10 candidates")
        return 0

    loop_request = EvalRequest(spec, examples, prompt, z=z[: args.loop_candidates])
    probe = Engine(handle, fused=False)
    reference_loop(probe, EvalRequest(spec, examples, prompt, z=z[:1]))  # warm-up
    t_loop = _timed(lambda: reference_loop(probe, loop_request), 1) * POPULATION / args.loop_candidates
    loop_logits = reference_loop(probe, EvalRequest(spec, examples, prompt, z=z[:2]))

    cap = args.memory_cap_mb or auto_cap.mb
    print(f"memory cap {cap:,.0f} MB ({'--memory-cap-mb' if args.memory_cap_mb else auto_cap.reason})")
    variants = {
        "hf": dict(fused=False, compile=False, memory_cap_mb=cap),
        "fused": dict(compile=False, memory_cap_mb=cap),
    }
    if args.compile:
        variants["fused+compile"] = dict(compile=True, memory_cap_mb=cap)
    results = {}
    print(f"reference loop : {pairs / t_loop:8.1f} candidate x examples / s  ({t_loop:.2f} s per population)")
    for name, options in variants.items():
        engine = Engine(handle, **options)
        started = time.perf_counter()
        first = engine.evaluate(warm)
        first_s = time.perf_counter() - started
        seconds = _timed(lambda e=engine: e.evaluate(request), 1)
        compile_s = engine.fused.compile_seconds if engine.fused is not None else 0.0
        diff = float(np.abs(first.logits - loop_logits).max())
        results[name] = {
            "seconds": seconds,
            "pairs_per_s": pairs / seconds,
            "speedup": t_loop / seconds,
            "first_call_s": first_s,
            "compile_s": compile_s,
            "max_logit_diff_vs_loop": diff,
        }
        amortized = ""
        if compile_s:
            job = JOB_POPULATIONS * seconds
            amortized = f", compile {compile_s:.1f} s = {100 * compile_s / job:.0f}% of a 600-call job"
        print(
            f"{name:14s}: {pairs / seconds:8.1f} pairs/s ({seconds:.2f} s per population) -> {t_loop / seconds:.2f}x "
            f"the loop (max |logit diff| {diff:.2g}{amortized})",
            flush=True,
        )
    best_name = max(results, key=lambda n: results[n]["pairs_per_s"])
    best_options = variants[best_name]
    engine = Engine(handle, **best_options)
    engine.evaluate(warm)
    achieved = engine_flops(engine, request) / results[best_name]["seconds"]
    shares = profile_shares(engine, request)
    print(
        f"best: {best_name}; achieved {achieved / 1e9:.1f} GFLOP/s vs measured matmul peak {peak / 1e9:.1f} GFLOP/s "
        f"({dtype}) -> {100 * achieved / peak:.1f}% of peak"
    )
    print(
        "profile of its population: "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
        + " of CPU time (matmul: aten::mm/addmm/bmm; attention: SDPA; other: norms, rotary, SiLU, copies)"
    )

    out = {
        "model": "smollm2-135m",
        "dtype": dtype,
        "population": POPULATION,
        "examples": len(examples),
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16_cpu(),
        "host": machine,
        "loop_pairs_per_s": pairs / t_loop,
        "engine": best_name,
        "engine_pairs_per_s": results[best_name]["pairs_per_s"],
        "speedup": results[best_name]["speedup"],
        "achieved_gflops": achieved / 1e9,
        "peak_gflops": peak / 1e9,
        "peak_fraction": achieved / peak,
        "profile_shares": shares,
        "memory_cap_mb": cap,
        "variants": results,
    }
    if args.bbtv2:
        deep = PromptSpec(mode="deep", n_tokens=N_TOKENS, projection=ProjectionSpec(dim=DIM))
        reuse = Engine(handle, **best_options)
        plain = Engine(handle, layer_reuse=False, **best_options)
        scales = reuse.evaluate(EvalRequest(spec, examples, deep)).scales
        deep = PromptSpec(mode="deep", n_tokens=N_TOKENS, projection=ProjectionSpec(dim=DIM), scales=scales)
        t_reuse = t_plain = 0.0
        for layer in (0, 10, 20):
            deep_request = EvalRequest(spec, examples, deep, z=z, layer=layer)
            t_reuse += _timed(lambda r=deep_request: reuse.evaluate(r), 1)
            t_plain += _timed(lambda r=deep_request: plain.evaluate(r), 1)
        print(
            f"bbtv2 step (layers 0/10/20): frozen-layer reuse {t_reuse / 3:.2f} s vs without {t_plain / 3:.2f} s "
            f"per population -> {t_plain / t_reuse:.2f}x"
        )
        out["bbtv2_layer_reuse_speedup"] = t_plain / t_reuse
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
