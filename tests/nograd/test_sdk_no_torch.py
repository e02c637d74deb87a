"""The SDK works on a machine without the model libraries: in a Python where torch, transformers, numpy and
safetensors cannot be imported (a `sys.meta_path` finder installed first refuses them, as if not installed),
`import nograd`, both clients and `nograd.sdk` import, and calls work over an `httpx.MockTransport`."""

from __future__ import annotations

import json
import subprocess
import sys

from procs import ROOT

BLOCKED = ("torch", "transformers", "numpy", "safetensors")

PROGRAM = """
import importlib.abc, json, sys

BLOCKED = tuple(sys.argv[1:])

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
try:
    import numpy
    blocking = False
except ImportError:
    blocking = True

HEAVY = ("nograd.service", "nograd.config", "nograd.methods", "nograd.engine")
import nograd
after_import = sorted(m for m in sys.modules if m.startswith("nograd"))
Client, AsyncClient = nograd.Client, nograd.AsyncClient
import asyncio
import httpx
import nograd.sdk

JOB = {"id": "job_1", "status": "succeeded", "method": "bbt", "budget": 10, "calls": 10}

def handle(request):
    if request.url.path == "/v1/jobs":
        return httpx.Response(201, json={**JOB, "status": "queued", "calls": 0})
    if request.url.path.endswith("/events"):
        body = 'id: 0\\nevent: generation\\ndata: {"generation": 0}\\n\\n'
        body += 'event: end\\ndata: {"status": "succeeded"}\\n\\n'
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json=JOB)

transport = httpx.MockTransport(handle)
with Client("http://nograd.test", "ng_x", transport=transport) as api:
    submitted = api.submit(method="bbt", task="mr", budget=10)
    events = [event for event, _ in api.events(submitted.id)]
    done = api.wait(submitted.id)

async def main():
    async with AsyncClient("http://nograd.test", "ng_x", transport=transport) as api:
        return (await api.job("job_1")).status

print(json.dumps({
    "blocking": blocking,
    "after_import": after_import,
    "submitted": submitted.status,
    "events": events,
    "done": done.status,
    "async": asyncio.run(main()),
    "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED),
    "heavy_nograd": sorted(m for m in sys.modules if m.startswith(HEAVY)),
}))
"""


def test_the_sdk_imports_and_works_without_torch_numpy_or_safetensors():
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, *BLOCKED], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["blocking"], "the finder did not block numpy: the test would prove nothing"
    assert out["after_import"] == ["nograd"]  # `import nograd` alone loads no subpackage
    assert (out["submitted"], out["events"], out["done"], out["async"]) == (
        "queued",
        ["generation", "end"],
        "succeeded",
        "succeeded",
    )
    assert out["loaded"] == [] and out["heavy_nograd"] == []
