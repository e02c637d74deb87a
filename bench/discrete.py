"""Discrete-prompt scoring: equal-length prompt texts batched as one population vs one candidate at a time,
measured side by side in one run (same engine settings otherwise, same populations, interleaved repeats).

Populations as the discrete methods send them, on mr (16-shot, 32 training examples), smollm2-135m:
- BBPL: 20 prompts of 10 PMI n-grams drawn uniformly from the task's 200-n-gram vocabulary (its first step);
- RLPrompt: 16 prompts of 5 tokens drawn uniformly from the model's vocabulary, decoded to text.
Prints, per kind, how many forward groups the population needs, the seconds per population each way, the speedup
and the largest difference between the two ways' logits (they are the same computation).

Usage: .venv/bin/python bench/discrete.py [--dtype bf16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nograd.clients.types import EvalRequest, PromptSpec  # noqa: E402
from nograd.engine import Engine, load_model  # noqa: E402
from nograd.engine.layout import text_ids  # noqa: E402
from nograd.pipeline import task_spec, to_examples  # noqa: E402
from nograd.tasks import get_task  # noqa: E402
from nograd.vocab import pmi_ngrams  # noqa: E402


def populations(tokenizer, seed: int = 0) -> dict[str, EvalRequest]:
    task = get_task("mr")
    train, _ = task.few_shot(16, seed)
    spec, examples = task_spec(task), to_examples(task, train)
    rng = np.random.default_rng(seed)
    vocab = pmi_ngrams(list(examples.texts), max_n=5, min_count=5, min_pmi=1.0, top=200)
    bbpl = [" ".join(vocab[i] for i in rng.integers(0, len(vocab), 10)) for _ in range(20)]
    rlprompt = [
        tokenizer.decode(rng.integers(1000, len(tokenizer) - 1, 5).tolist()).replace("{", "(").replace("}", ")")
        for _ in range(16)
    ]
    return {
        kind: EvalRequest(spec, examples, PromptSpec(mode="text"), texts=texts)
        for kind, texts in (("bbpl", bbpl), ("rlprompt", rlprompt))
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "discrete.txt"))
    args = parser.parse_args(argv)
    handle = load_model("smollm2-135m", dtype=args.dtype)
    batched, single = Engine(handle, discrete_batching=True), Engine(handle, discrete_batching=False)
    lines = [
        f"smollm2-135m {args.dtype}, mr 16-shot (32 examples); best of {args.repeats} interleaved repeats",
        "",
        "| population | candidates | forward groups | one at a time s | batched s | speedup | max |diff| |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, request in populations(handle.tokenizer).items():
        lengths = {len(text_ids(handle.tokenizer, t + "\n")) for t in request.texts}
        a, b = batched.discrete_logits(request), single.discrete_logits(request)  # warm-up, and the check
        best = {"single": float("inf"), "batched": float("inf")}
        for _ in range(args.repeats):
            for name, engine in (("single", single), ("batched", batched)):
                started = time.perf_counter()
                engine.discrete_logits(request)
                best[name] = min(best[name], time.perf_counter() - started)
        lines.append(
            f"| {kind} | {request.population} | {len(lengths)} | {best['single']:.2f} | "
            f"{best['batched']:.2f} | {best['single'] / best['batched']:.2f}x | {np.abs(a - b).max():.2g} |"
        )
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
