"""Engine throughput vs the reference one-forward-per-candidate loop, measured side by side in one run.

Shapes as in BBT: 50 prompt tokens, 32 training examples (mr, 16-shot), population 20, same model and dtype.
- reference loop: for each candidate, one forward of the full causal LM over prompt + example (all 32 examples
  padded together), LM head over the whole sequence, label words read at the scored position;
- engine: the whole population in one `evaluate` (prefix reuse, label-row head, memory-capped chunks);
- BBTv2: the engine with vs without frozen-layer reuse, averaged over varying layers 0, 10, 20;
- achieved FLOP/s of the engine against this machine's measured bf16/fp32 matmul peak.

Usage: .venv/bin/python bench/throughput.py [--dtype bf16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nograd.clients.types import EvalRequest, ProjectionSpec, PromptSpec  # noqa: E402
from nograd.engine import Engine, load_model  # noqa: E402
from nograd.pipeline import task_spec, to_examples  # noqa: E402
from nograd.tasks import get_task  # noqa: E402

POPULATION, N_TOKENS, DIM = 20, 50, 500


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
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


def matmul_peak(dtype: torch.dtype) -> float:
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    seconds = _timed(lambda: a @ b, 3)
    return 2 * 2048**3 / seconds


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-cap-mb", type=float, default=256)
    args = parser.parse_args(argv)

    handle = load_model("smollm2-135m", dtype=args.dtype)
    task = get_task("mr")
    train, _ = task.few_shot(16, 0)
    spec, examples = task_spec(task), to_examples(task, train)
    z = np.random.default_rng(0).normal(size=(POPULATION, DIM))
    prompt = PromptSpec(mode="add", n_tokens=N_TOKENS, projection=ProjectionSpec(dim=DIM))
    request = EvalRequest(spec, examples, prompt, z=z)
    engine = Engine(handle, memory_cap_mb=args.memory_cap_mb)
    pairs = POPULATION * len(examples)

    t_loop = _timed(lambda: reference_loop(engine, request), args.repeats)
    t_engine = _timed(lambda: engine.evaluate(request), args.repeats)
    same = np.abs(reference_loop(engine, request) - engine.evaluate(request).logits).max()
    print(
        f"model smollm2-135m {args.dtype}, {N_TOKENS} prompt tokens, {len(examples)} examples, population "
        f"{POPULATION}, torch threads {torch.get_num_threads()}"
    )
    print(f"reference loop : {pairs / t_loop:8.1f} candidate x examples / s  ({t_loop:.2f} s per population)")
    print(f"engine         : {pairs / t_engine:8.1f} candidate x examples / s  ({t_engine:.2f} s per population)")
    print(f"speedup engine / reference loop: {t_loop / t_engine:.2f}x   (max |logit diff| {same:.3g}, dtype rounding)")

    deep = PromptSpec(mode="deep", n_tokens=N_TOKENS, projection=ProjectionSpec(dim=DIM))
    reuse, plain = (
        Engine(handle, memory_cap_mb=args.memory_cap_mb),
        Engine(handle, memory_cap_mb=args.memory_cap_mb, layer_reuse=False),
    )
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

    torch_dtype = handle.dtype
    peak = matmul_peak(torch_dtype)
    achieved = engine_flops(engine, request) / t_engine
    print(
        f"engine achieved {achieved / 1e9:.1f} GFLOP/s vs measured matmul peak {peak / 1e9:.1f} GFLOP/s "
        f"({args.dtype}) -> {100 * achieved / peak:.0f}% of peak"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
