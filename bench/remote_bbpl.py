"""One BBPL job through the REST API against llama.cpp's OpenAI-compatible server (the SmolLM2 GGUF), next to the
same job on this service's own engine (the same weights, dequantized, in torch).

Usage:
    .venv/bin/python bench/remote_bbpl.py --task mr --budget 100 --k-shot 8 [--no-rescore]
`--no-rescore` floors label words missing from the top-100 list instead of asking for them again with logit_bias.
Starts `python -m llama_cpp.server` on a free port and `nograd serve` (embedded worker with smollm2-135m), both
private to the run; prints both jobs' dev/test metrics, the selected prompts, wall time and the remote token
account, and writes them to bench/results/remote_bbpl.txt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _stack import create_key  # noqa: E402
from procs import free_port, llama_server, serve  # noqa: E402

from nograd.sdk import Client  # noqa: E402


def _wait(api: Client, job_id: str) -> dict:
    while (job := api.job(job_id))["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
    return job


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mr")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--k-shot", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rescore", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = args.out or str(ROOT / "bench" / "results" / f"remote_bbpl{'_floor' if args.no_rescore else ''}.txt")
    job = {
        "method": "bbpl",
        "task": args.task,
        "budget": args.budget,
        "k_shot": args.k_shot,
        "seed": args.seed,
        "dev_every": 50,
        "options": {"popsize": 10, "prompt_length": 5},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llama, url = llama_server(tmp / "llama.log", threads=1)
        port = free_port()
        api_proc = serve(
            tmp / "data",
            None,
            port,
            models="smollm2-135m",
            env={"NOGRAD_REMOTE_ALLOW": "127.0.0.1", "NOGRAD_DTYPE": "fp32"},
        )
        try:
            key = create_key(tmp / "data")
            with Client(f"http://127.0.0.1:{port}", key) as api:
                rows = []
                remote = {
                    "kind": "openai",
                    "base_url": url,
                    "model": "smollm2",
                    "concurrency": 1,
                    "top_logprobs": 100,
                    "rescore_missing": not args.no_rescore,
                }
                for name, extra in [
                    ("llama.cpp (REST endpoint)", {"endpoint": remote}),
                    ("local engine", {"model": "smollm2-135m"}),
                ]:
                    started = time.perf_counter()
                    done = _wait(api, api.submit(**job, **extra)["id"])
                    if done["status"] != "succeeded":
                        raise SystemExit(f"{name}: {done['status']}: {done['error']}")
                    rows.append((name, done, time.perf_counter() - started))
        finally:
            api_proc.terminate()
            llama.terminate()
    lines = [
        f"BBPL on {args.task}, {args.k_shot}-shot, seed {args.seed}, budget {args.budget} calls, popsize 10, "
        f"5 n-grams; SmolLM2-135M (llama.cpp: Q4_1 GGUF; local: the same weights dequantized, fp32); missing "
        f"label words {'floored' if args.no_rescore else 'rescored with logit_bias'}",
        "",
        "| endpoint | dev | test | wall s | prompt |",
        "|---|---|---|---|---|",
    ]
    for name, done, seconds in rows:
        result = done["result"]
        lines.append(
            f"| {name} | {100 * result['dev_metric']:.1f} | {100 * result['test_metric']:.1f} | "
            f"{seconds:.0f} | {result.get('prompt_text', '')!r} |"
        )
    usage = rows[0][1]["result"]["usage"]
    lines += ["", f"llama.cpp token account: {usage}"]
    text = "\n".join(lines)
    print(text)
    Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
