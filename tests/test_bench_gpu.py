"""bench/gpu.py --smoke (the GPU check's CPU mode): it runs every section and its JSON holds every figure, with
values that make sense for what ran. The figures themselves are measured on a GPU (the script's docstring)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # ~40 s on an idle 2-core machine; imports alone take 15 s a process on a loaded one
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["smoke"] is True and report["meta"]["device"] == "cpu"
    assert set(report["seconds"]) == {"a", "b", "c"}

    tests = report["tests"]
    assert tests["ok"] and tests["complete"] and tests["device"] == "cpu"
    assert tests["passed"] >= 1 and tests["failed"] == tests["errors"] == 0

    throughput = report["throughput"]
    assert throughput["matmul_peak"]["tflops"] > 0
    tiny = throughput["models"]["tiny"]
    assert tiny["max_abs_logit_diff_vs_loop"] < 1e-4  # fp32: the engine scores what the reference loop scores
    assert tiny["loop"]["pairs_per_s"] > 0 and tiny["pairs"] == 4 * 4
    for label, cap in (("default", 256), ("auto", None)):
        engine = tiny["engine"][label]
        assert engine["pairs_per_s"] > 0 and engine["tflops"] > 0 and engine["speedup_vs_loop"] > 0
        assert engine["best_s"] > 0 and len(engine["all_s"]) == 1  # --smoke: one timed repeat after the warm-up
        assert engine["peak_memory_bytes"] is None  # device memory is read on CUDA only
        assert engine["memory_cap_mb"] == cap if cap else 64 <= engine["memory_cap_mb"] <= 256
    assert "auto: 25% of" in tiny["auto_cap"]

    service = report["service"]
    assert service["succeeded"] == service["jobs"] == 2 and not service["failed"] and service["unfinished"] == 0
    assert service["calls"] == 2 * service["job"]["budget"] and service["calls_per_s"] > 0
    assert 0 < service["busy_in_evaluate"] <= 1 and service["evaluations"] >= 4
    assert service["busy_nvml"] is None and "NVML not readable" in service["busy_measure"]

    one_b, busy = report["goals"]
    assert one_b["value"] is None and one_b["met"] is None  # no ~1B model in the smoke run
    assert busy["value"] == service["busy_in_evaluate"] and busy["met"] is None  # 2 jobs, not the goal's 8
    for section in ("(a) exactness tests on cpu: ", "(b) throughput", "(c) service: 2 jobs"):
        assert section in done.stdout
