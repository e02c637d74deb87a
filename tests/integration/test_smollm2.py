"""The real built-in SmolLM2-135M (converted once from the packaged GGUF): BBT's training loss goes down."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("safetensors")

from runs import resolved  # noqa: E402

from nograd.clients.local import LocalClient  # noqa: E402
from nograd.engine import build_engine  # noqa: E402
from nograd.methods import make_search  # noqa: E402
from nograd.pipeline import prepare  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    try:
        # auto: bf16 where the CPU computes it natively, else fp32 (emulated bf16 made this test 6x slower there)
        return LocalClient(build_engine("smollm2-135m", dtype="auto", device="cpu", memory_cap_mb=128))
    except ValueError as exc:  # package with the model file not installed
        pytest.skip(str(exc))


def test_bbt_training_loss_goes_down(client):
    config = resolved(task="mr", method="bbt", k_shot=4, budget=80, popsize=10, alpha=1.0, seed=0, dev_every=40)
    data = prepare(config)
    search = make_search(config, data.spec, data.train, data.dev, n_layers=30)

    async def go():
        initial = await search.start(client)
        entries = [await search.step(client) for _ in range(8)]
        return initial, entries

    initial, entries = asyncio.run(go())
    assert search.calls == 80
    first, last = entries[0]["mean_loss"], np.mean([e["mean_loss"] for e in entries[-2:]])
    print(
        f"initial {initial['train_loss']:.4f}, first generation mean {first:.4f}, last two mean {last:.4f}, "
        f"best {search.best_train['loss']:.4f}"
    )
    assert search.best_train["loss"] < initial["train_loss"]
    assert last < first  # the population itself moved to lower loss, not just one lucky sample


def test_builtin_model_is_cached_as_safetensors(client):
    from nograd.engine.models import builtin_model_path

    handle = client.engine.handle
    assert handle.n_layers == 30 and handle.hidden_size == 576 and handle.kind == "causal"
    folder = builtin_model_path("smollm2-135m")
    assert (folder / "model.safetensors").exists() and (folder / "nograd.json").exists()
    assert handle.weights_hash and handle.model_id.startswith("smollm2-135m@")
