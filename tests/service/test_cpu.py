"""Service processes hold numpy's BLAS to `blas_threads` (default 1); torch's own threads are left alone."""

from __future__ import annotations

import json
import subprocess
import sys

from nograd.service.settings import Settings

PROBE = """
import json, sys
import numpy, torch
from threadpoolctl import threadpool_info
from nograd.service.cpu import limit_blas_threads
torch.set_num_threads(2)
limit_blas_threads(int(sys.argv[1]))
print(json.dumps({"openblas": [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"],
                  "torch": torch.get_num_threads()}))
"""


def _threads(limit: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(limit)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_numpy_blas_is_limited_and_torch_is_not():
    seen = _threads(1)
    assert seen["openblas"] and set(seen["openblas"]) == {1}
    assert seen["torch"] == 2
    assert set(_threads(3)["openblas"]) == {3}  # the limit is what is asked, whatever the machine's cores
    assert Settings().blas_threads == 1
