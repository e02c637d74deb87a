"""Candidate racing (`racing`): the schedule (label-balanced, deterministic, E/4 + E/4 + E/2, halving), exact
example-evaluation accounting and the budget, the values the optimizer is told (the race's ranking on the loss
scale), the objectives on subsets, exact resume, and the option's plumbing (config rules, CLI, registry). A
service job: tests/service/test_racing_jobs.py."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from runs import resolved

from nograd import discrete, racing
from nograd.cli import build_parser
from nograd.clients.local import LocalClient
from nograd.clients.losses import all_losses
from nograd.clients.types import Examples, TaskSpec
from nograd.config import ConfigError
from nograd.discrete import RLPromptSearch
from nograd.engine import Engine
from nograd.engine.fake import FakeEngine
from nograd.methods import METHODS, make_search
from nograd.optimizers import make_optimizer, state_from_json, state_to_json
from nograd.pipeline import prepare
from nograd.rlprompt import reward

BASE = dict(task="trec", model="fake", popsize=10, dim=8, dev_every=10, seed=3)  # trec: 6 labels x 16 = 96 train


class Recording:
    """A client that keeps every request it forwards (to the fake model unless given another engine)."""

    def __init__(self, engine=None):
        self.inner, self.requests = LocalClient(engine or FakeEngine(model_id="fake")), []

    async def evaluate(self, request):
        self.requests.append(request)
        return await self.inner.evaluate(request)


def _search(config, state=None, stop_after=None, client=None):
    data = prepare(config)
    search = make_search(config, data.spec, data.train, data.dev, 4)
    client = client or Recording()
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


def _strip(entries):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in entries]


# ---------------------------------------------------------------- the schedule


def test_the_order_is_a_label_balanced_permutation_fixed_by_seed_and_generation():
    labels = np.random.default_rng(0).permutation([0] * 10 + [1] * 10 + [2] * 10)
    order = racing.example_order(labels, seed=5, generation=2)
    assert sorted(order.tolist()) == list(range(30))
    for m in range(1, 31):  # every prefix holds each label within one of the others
        counts = Counter(labels[order[:m]].tolist())
        assert max(counts.values()) - min(counts.get(c, 0) for c in range(3)) <= 1
    np.testing.assert_array_equal(order, racing.example_order(labels, seed=5, generation=2))
    assert not np.array_equal(order, racing.example_order(labels, seed=5, generation=3))
    assert not np.array_equal(order, racing.example_order(labels, seed=6, generation=2))
    uneven = racing.example_order([0, 0, 0, 0, 0, 1], seed=0, generation=1)  # a label that runs out drops out
    assert sorted(uneven.tolist()) == list(range(6)) and 5 in uneven[:2]


def test_slices_are_a_quarter_a_quarter_and_the_rest_and_each_round_keeps_half():
    for n in range(4, 50):
        bounds = racing.slice_bounds(n)
        assert [b[0] for b in bounds] == [0, bounds[0][1], bounds[1][1]] and bounds[-1][1] == n
        assert [stop - start for start, stop in bounds] == [n // 4, n // 2 - n // 4, n - n // 2]
        assert all(stop > start for start, stop in bounds)
    with pytest.raises(ValueError, match="at least 4"):
        racing.slice_bounds(3)
    for p in range(1, 60):
        assert racing.survivors_per_round(p) == [p, math.ceil(p / 2), math.ceil(p / 4)]
    assert racing.cost(10, 96) == 10 * 24 + 5 * 24 + 3 * 48
    assert racing.cost(1, 96) == 96  # one candidate raced is one call


def test_the_largest_population_that_fits_is_the_largest():
    for available in range(0, 700, 7):
        p = racing.largest_population(10, 96, available)
        assert p == 0 or racing.cost(p, 96) <= available
        assert p == 10 or racing.cost(p + 1, 96) > available


def test_told_values_rank_by_rounds_survived_then_by_loss():
    rng = np.random.default_rng(1)
    for _ in range(50):
        rounds_seen = rng.integers(1, 4, 12)
        losses = rng.normal(0, 1, 12) + rng.choice([0.0, 5.0])
        values = racing.told_values(rounds_seen, losses)
        race_order = np.lexsort((losses, -rounds_seen))  # survived longer first, then lower loss
        np.testing.assert_array_equal(np.argsort(values, kind="stable"), race_order)
        finals = rounds_seen == rounds_seen.max()
        np.testing.assert_array_equal(values[finals], losses[finals])  # survivors: their own losses
        for tier in np.unique(rounds_seen):
            members = rounds_seen == tier
            shift = values[members] - losses[members]  # one constant per tier, never down
            assert np.allclose(shift, shift[0]) and shift[0] >= 0
            better = rounds_seen > tier
            if better.any():
                assert values[members].min() > values[better].max()


def test_a_dropped_tier_already_worse_keeps_its_losses_and_ties_are_broken_strictly():
    np.testing.assert_array_equal(racing.told_values([3, 3, 1], [0.1, 0.2, 0.9]), [0.1, 0.2, 0.9])
    values = racing.told_values([3, 1, 1], [0.5, 0.5, 0.7])
    assert values[1] > values[0] and values[2] - values[1] == pytest.approx(0.2)


def test_cma_es_sees_the_race_ranking():
    """pycma ranks what it is told: the told values leave it where telling the race's ranks does."""
    ranked, valued = (make_optimizer("cma", dim=5, popsize=8, sigma0=1.0, seed=0, budget=80) for _ in range(2))
    rng = np.random.default_rng(2)
    for _ in range(4):
        population = ranked.ask()
        np.testing.assert_array_equal(population, valued.ask())
        rounds_seen, losses = np.array([3, 3, 2, 2, 1, 1, 1, 1]), rng.normal(0, 1, 8)
        ranks = np.empty(8)
        ranks[np.lexsort((losses, -rounds_seen))] = np.arange(8)
        ranked.tell(population, ranks)
        valued.tell(population, racing.told_values(rounds_seen, losses))
    np.testing.assert_allclose(valued.mean, ranked.mean, rtol=0, atol=1e-12)
    assert valued.step_size == pytest.approx(ranked.step_size, rel=1e-12)


# ---------------------------------------------------------------- the search


def test_a_racing_generation_scores_label_balanced_slices_and_survivors_see_the_whole_batch():
    client = Recording()
    search, entries = _search(resolved(**BASE, method="bbt", budget=100, racing=True), stop_after=1, client=client)
    first, second, third = client.requests[-3:]  # start() made the others (train, dev)
    assert [r.population for r in (first, second, third)] == [10, 5, 3]
    assert [len(r.examples) for r in (first, second, third)] == [24, 24, 48]
    assert Counter(first.examples.labels) == Counter(dict.fromkeys(range(6), 4))
    texts = first.examples.texts + second.examples.texts + third.examples.texts
    assert sorted(texts) == sorted(search.train.texts)  # each example once, the whole batch
    entry = entries[0]
    assert entry["racing"] == {"rounds": [[10, 24], [5, 24], [3, 48]], "example_evals": 504}
    # the survivors' values are their losses on the whole batch, exactly (the fake model's logits do not depend
    # on the batch): score the same candidates on the full batch
    survivors = np.asarray(third.z)
    full = asyncio.run(client.evaluate(search._request(search.train, population=survivors)))
    values = np.asarray(entry["losses"])
    assert sorted(values)[:3] == sorted(full.loss.tolist())
    assert entry["min_loss"] == search.best_train["loss"] == full.loss.min()
    # the ones that survived round 1 are round 1's best half
    round_one = asyncio.run(client.evaluate(search._request(first.examples, population=np.asarray(first.z))))
    np.testing.assert_array_equal(np.asarray(second.z), np.asarray(first.z)[racing.keep_best(round_one.loss, 5)])


def test_the_budget_counts_example_evaluations_exactly():
    budget = 12  # 504 example-evaluations (5.25 calls) a generation: two, then a truncated race of two
    search, entries = _search(resolved(**BASE, method="bbt", budget=budget, racing=True))
    n = len(search.train)
    per_round = [sum(c * e for c, e in entry["racing"]["rounds"]) for entry in entries]
    assert per_round == [entry["racing"]["example_evals"] for entry in entries]
    assert search.example_evals == sum(per_round) <= budget * n
    assert budget * n - search.example_evals < n and search.done  # less than one call left
    assert [entry["calls"] for entry in entries] == [5.25, 10.5, search.example_evals / n]
    assert search.calls == search.example_evals / n and search.whole_calls == budget
    last = entries[-1]
    assert len(last["losses"]) == racing.largest_population(10, n, budget * n - 1008) == 2
    assert search.optimizer.generation == 2  # the truncated race was not told


def test_dev_rounds_follow_fractional_calls():
    search, entries = _search(resolved(**BASE, method="bbt", budget=53, racing=True))
    assert [e["calls"] for e in entries if "dev" in e] == [10.5, 21.0, 31.5, 42.0, 52.5]
    assert search.result()["calls"] == 52.5 and search.whole_calls == 53


@pytest.mark.parametrize("method", ["bbt", "bbtv2", "bbpl", "icl_search"])
def test_a_racing_run_resumes_exactly(method):
    config = resolved(**BASE, method=method, budget=40, racing=True)
    straight, straight_entries = _search(config)
    first, first_entries = _search(config, stop_after=3)
    state = state_from_json(state_to_json(first.state_dict()))
    assert state["example_evals"] == first.example_evals
    resumed, resumed_entries = _search(config, state=state)
    assert _strip(first_entries + resumed_entries) == _strip(straight_entries)
    np.testing.assert_array_equal(resumed.result()["x"], straight.result()["x"])
    assert resumed.example_evals == straight.example_evals


def test_without_racing_nothing_changes_and_an_old_checkpoint_loads():
    config = resolved(**BASE, method="bbt", budget=50)
    straight, entries = _search(config)
    assert all("racing" not in e and isinstance(e["calls"], int) for e in entries)
    assert straight.calls == 50 and straight.example_evals == 50 * len(straight.train)
    first, _ = _search(config, stop_after=2)
    old = {k: v for k, v in state_from_json(state_to_json(first.state_dict())).items() if k != "example_evals"}
    resumed, _ = _search(config, state=old)  # written before racing: calls x training examples
    assert resumed.example_evals == straight.example_evals
    np.testing.assert_array_equal(resumed.result()["x"], straight.result()["x"])


def test_rlprompt_races_on_a_tiny_model(causal_handle, monkeypatch):
    """The policy LM is the tiny test model; 12 training examples race in slices of 3, 3 and 6. (Resuming is
    the loop's, tested above; RLPrompt's own state round-trips in test_discrete.py.)"""
    monkeypatch.setattr(discrete, "shared_handle", lambda name: causal_handle)
    task = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
    train = Examples(
        texts=["a fine film", "dull and slow", "terrible plot", "a wonderful story"] * 3, labels=[1, 0] * 6
    )
    dev = Examples(texts=["awful pacing", "the acting superb"], labels=[0, 1])
    options = dict(budget=4, popsize=4, dev_every=4, seed=1, prompt_length=3, top_k=20, mlp_hidden=16)
    config = resolved(method="rlprompt", policy_model="tiny", racing=True, **options)

    async def go(client):
        search = make_search(config, task, train, dev, 3)
        await search.start(client)
        return search, [await search.step(client) for _ in range(2)]

    client = Recording(Engine(causal_handle))
    search, entries = asyncio.run(go(client))
    assert [e["racing"]["rounds"] for e in entries] == [[[4, 3], [2, 3], [1, 6]]] * 2  # 2 calls a generation
    assert search.example_evals == 4 * 12 and search.calls == 4 and search.done
    last_race = [r for r in client.requests if r.population == 1 and len(r.examples) == 6][-1]
    full = asyncio.run(client.evaluate(replace(last_race, examples=train)))
    expected = -reward(full.logits, np.asarray(train.labels), config.reward_correct, config.reward_wrong)[0]
    assert min(entries[-1]["losses"]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_icl_search_leaves_out_the_examples_a_candidate_shows_on_any_subset():
    config = resolved(**BASE, method="icl_search", budget=40, prompt_length=3)
    data = prepare(config)
    search = make_search(config, data.spec, data.train, data.dev, 4)
    rows = np.array([[0.0, 5.0, 7.0], [-1.0, -1.0, -1.0]])
    result = asyncio.run(
        LocalClient(FakeEngine(model_id="fake")).evaluate(search._request(data.train, population=rows))
    )
    labels = np.asarray(data.train.labels)
    columns = np.array([2, 5, 9, 11, 40])  # shows 5 of these; 0 and 7 are not among them
    losses = search._objective(result.logits[:, columns], columns, rows)
    keep = np.array([2, 9, 11, 40])
    expected = all_losses(result.logits[:1, keep], labels[keep], data.spec.metric)[0]["ce"][0]
    assert losses[0] == pytest.approx(expected, rel=1e-12)
    plain = all_losses(result.logits[1:, columns], labels[columns], data.spec.metric)[0]["ce"][0]
    assert losses[1] == pytest.approx(plain, rel=1e-12)  # the empty row shows nothing


def test_rlprompt_rewards_the_labels_of_the_columns_it_is_given():
    logits = np.log(np.array([[[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]]))
    labels = [1, 0, 1]
    search = SimpleNamespace(
        train=Examples(texts=["a", "b", "c"], labels=labels),
        config=SimpleNamespace(reward_correct=200.0, reward_wrong=180.0),
    )
    columns = np.array([2, 0])
    losses = RLPromptSearch._objective(search, logits[:, columns], columns, np.zeros((1, 3)))
    np.testing.assert_allclose(losses, -reward(logits[:, columns], np.array([1, 1])))


# ---------------------------------------------------------------- the option


def test_racing_is_an_option_of_every_search_method():
    assert [m.name for m in METHODS.values() if "racing" in m.options] == [
        "bbt",
        "bbtv2",
        "bbpl",
        "rlprompt",
        "icl_search",
    ]
    assert build_parser().parse_args(["run", "--racing"]).racing is True
    assert build_parser().parse_args(["run"]).racing is False


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(popsize=3), "popsize >= 4"),
        (dict(task="mr", k_shot=1), "at least 4 training examples"),
        (dict(method="icl_search", prompt_length=6, k_shot=4), "fewer than 6"),
    ],
)
def test_racing_refuses_what_it_cannot_race(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolved(**{**BASE, "method": "bbt", "racing": True, **options})
    assert info.value.field == "racing"
    resolved(**{**BASE, "method": "bbt", **options})  # the same options without racing are fine
