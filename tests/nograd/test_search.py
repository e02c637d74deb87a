"""The search loop on a tiny model: exact budget, dev selection, state round-trip, baselines, determinism."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from runs import resolved

from nograd.clients.local import LocalClient
from nograd.clients.types import Examples, TaskSpec
from nograd.config import ConfigError, RunConfig
from nograd.engine import Engine
from nograd.methods import make_search
from nograd.optimizers import state_from_json, state_to_json
from nograd.pipeline import resolve_run

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
TRAIN = Examples(
    texts=["the movie was great", "a dull boring film", "terrible plot", "a wonderful story"], labels=[1, 0, 0, 1]
)
DEV = Examples(texts=["awful pacing", "the acting superb"], labels=[0, 1])


@pytest.fixture(scope="module")
def client(causal_handle):
    return LocalClient(Engine(causal_handle))


def _config(method="bbt", **kw):
    options = dict(method=method, budget=50, popsize=8, dim=6, n_tokens=3, dev_every=16, seed=1, sigma0=1.0)
    options.update(kw)
    return resolved(**options)


async def _search(config, client, n_layers=3, stop_after=None, state=None):
    search = make_search(config, TASK, TRAIN, DEV, n_layers)
    entries = []
    if state is None:
        await search.start(client)
    else:
        search.load_state(state)
    while not search.done and (stop_after is None or search.generation < stop_after):
        entries.append(await search.step(client))
    return search, entries


@pytest.mark.parametrize("method, optimizer", [("bbt", "cma"), ("bbtv2", "cma"), ("bbt", "ng:TBPSA")])
def test_budget_is_exact_and_dev_selects(client, method, optimizer):
    config = _config(method, optimizer=optimizer)
    search, entries = asyncio.run(_search(config, client))
    assert search.calls == 50  # 6 full generations of 8 + a partial one of 2
    assert [len(e["losses"]) for e in entries] == [8] * 6 + [2]
    assert [e["calls"] for e in entries if "dev" in e] == [16, 32, 48, 50]
    result = search.result()
    assert result["dev_metric"] >= result["initial"]["dev_metric"]
    assert result["x"].shape == ((3, 6) if method == "bbtv2" else (6,))
    if method == "bbtv2":
        assert [e["layer"] for e in entries] == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("method", ["bbt", "bbtv2"])
def test_state_round_trip_continues_identically(client, method):
    config = _config(method)
    straight, straight_entries = asyncio.run(_search(config, client))
    first, first_entries = asyncio.run(_search(config, client, stop_after=3))
    text = state_to_json(first.state_dict())
    resumed, resumed_entries = asyncio.run(_search(config, client, state=state_from_json(text)))
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in first_entries + resumed_entries]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in straight_entries]
    np.testing.assert_array_equal(resumed.result()["x"], straight.result()["x"])


def test_same_seed_same_result_other_seed_differs(client):
    a, _ = asyncio.run(_search(_config(), client))
    b, _ = asyncio.run(_search(_config(), client))
    c, _ = asyncio.run(_search(_config(seed=2), client))
    assert a.state_dict()["best_train"]["loss"] == b.state_dict()["best_train"]["loss"]
    np.testing.assert_array_equal(a.result()["x"], b.result()["x"])
    assert a.state_dict()["best_train"]["loss"] != c.state_dict()["best_train"]["loss"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("method", "sgd", "method"),
        ("budget", 3, "budget"),
        ("loss", "mse", "loss"),
        ("mode", "deep", "mode"),
        ("optimizer", "adam", "optimizer"),
        ("popsize", 0, "popsize"),
        ("dtype", "int8", "dtype"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_run(RunConfig.from_dict({field: value}))
    assert info.value.field == field
    with pytest.raises(ConfigError, match="is not a run option") as info:
        RunConfig.from_dict({"budgett": 3})
    assert info.value.field == "budgett"
