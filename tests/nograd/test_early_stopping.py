"""Early stopping: `patience` dev rounds without a better dev metric, or (with `optimizer_stop`) the optimizer's own
stop criteria, end a search before its budget; the result reports why and the unused budget, the history's last
record says why, the state round-trips (a service job: tests/service/test_early_stopping_jobs.py)."""

from __future__ import annotations

import asyncio

from runs import resolved

from nograd.clients.local import LocalClient
from nograd.engine.fake import FakeEngine
from nograd.methods import make_search
from nograd.optimizers import state_from_json, state_to_json
from nograd.pipeline import prepare, run

BASE = dict(task="trec", model="fake", method="bbt", popsize=10, dim=8, dev_every=10)


def _search(config, state=None, stop_after=None):
    data = prepare(config)
    search = make_search(config, data.spec, data.train, data.dev, 4)
    client = LocalClient(FakeEngine(model_id="fake"))
    entries = []

    async def go():
        if state is None:
            await search.start(client)
        else:
            search.load_state(state)
        while not search.done and (stop_after is None or search.generation < stop_after):
            entries.append(await search.step(client))

    asyncio.run(go())
    return search, entries


def test_patience_stops_after_n_dev_rounds_without_improvement():
    search, entries = _search(resolved(**BASE, budget=5000, patience=3))
    assert search.calls < 5000 and search.calls % 10 == 0
    improved = [e["dev"]["improved"] for e in entries]  # a dev round every generation (dev_every = popsize)
    assert improved[-3:] == [False, False, False] and True in improved
    assert entries[-1]["stopped"] == "no better dev metric in 3 dev rounds"
    assert all("stopped" not in e for e in entries[:-1])
    assert search.result()["stopped"] == entries[-1]["stopped"]


def test_without_patience_the_whole_budget_is_used():
    search, entries = _search(resolved(**BASE, budget=200))
    assert search.calls == 200 and search.result()["stopped"] is None and "stopped" not in entries[-1]


def test_the_optimizers_own_stop_criteria_end_the_search_when_asked():
    tiny_steps = dict(BASE, budget=200, sigma0=1e-13)  # CMA-ES's tolx fires after the first generation
    search, entries = _search(resolved(**tiny_steps, optimizer_stop=True))
    assert search.calls == 10 and "tolx" in entries[-1]["stopped"] and "dev" in entries[-1]  # a last dev round
    ignored, _ = _search(resolved(**tiny_steps))  # off by default: the run is what it always was
    assert ignored.calls == 200 and ignored.stopped is None


def test_the_stop_survives_a_checkpoint_and_an_old_checkpoint_loads():
    config = resolved(**BASE, budget=5000, patience=3)
    straight, straight_entries = _search(config)
    first, _ = _search(config, stop_after=2)
    state = state_from_json(state_to_json(first.state_dict()))
    resumed, _ = _search(config, state=state)
    assert (resumed.calls, resumed.stopped) == (straight.calls, straight.stopped)
    old = {k: v for k, v in state.items() if k not in ("stale", "stopped")}  # written before early stopping
    again, _ = _search(config, state=old)
    assert again.calls == straight.calls


def test_the_result_reports_why_and_the_unused_budget(tmp_path):
    config = resolved(**BASE, budget=5000, patience=2)
    result = asyncio.run(run(config, LocalClient(FakeEngine(model_id="fake")), out_dir=tmp_path / "run"))
    assert result["stopped"] == "no better dev metric in 2 dev rounds"
    assert result["unused_budget"] == 5000 - result["calls"] > 0
    full = asyncio.run(run(resolved(**BASE, budget=30), LocalClient(FakeEngine(model_id="fake"))))
    assert full["stopped"] is None and full["unused_budget"] == 0
