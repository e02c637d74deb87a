"""Discrete prompts on a tiny model: the engine's text/demos modes are exact, and BBPL, ICL search and RLPrompt
keep the search contract (exact budget, dev selection never below the manual prompt, exact resume)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from runs import resolved

from nograd import discrete
from nograd.clients.local import LocalClient
from nograd.clients.render import full_text, label_words, render
from nograd.clients.types import EvalRequest, Examples, InvalidRequest, PromptSpec, TaskSpec
from nograd.config import ConfigError
from nograd.engine import Engine
from nograd.methods import make_search
from nograd.optimizers import state_from_json, state_to_json
from nograd.rlprompt import reward
from nograd.service.queue import MemoryQueue
from nograd.service.queue.wire import decode_work, encode_work

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
TRAIN = Examples(
    texts=["the movie was great and superb", "a dull boring film", "terrible plot", "a wonderful story great"] * 3,
    labels=[1, 0, 0, 1] * 3,
)
DEV = Examples(texts=["awful pacing", "the acting superb"], labels=[0, 1])
POOL = replace(TASK, demos=tuple((t, None, label) for t, label in zip(TRAIN.texts, TRAIN.labels)))


@pytest.fixture(scope="module")
def client(causal_handle):
    return LocalClient(Engine(causal_handle))


@pytest.fixture(scope="module", autouse=True)
def tiny_policy(causal_handle):
    """RLPrompt's policy LM "tiny" is the tiny test model."""
    loaded = discrete.shared_handle
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(discrete, "shared_handle", lambda name: causal_handle if name == "tiny" else loaded(name))
        yield


def _evaluate(client, request):
    return asyncio.run(client.evaluate(request))


def test_text_mode_is_the_manual_template_with_the_prompt_in_front(client):
    result = _evaluate(
        client, EvalRequest(TASK, TRAIN, PromptSpec(mode="text"), texts=["great movie", "", "great movie"])
    )
    with_text = replace(TASK, template="great movie\n" + TASK.template)
    direct = _evaluate(client, EvalRequest(with_text, TRAIN, PromptSpec(mode="none")))
    manual = _evaluate(client, EvalRequest(TASK, TRAIN, PromptSpec(mode="none")))
    np.testing.assert_allclose(result.logits[0], direct.logits[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.logits[1], manual.logits[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.logits[0], result.logits[2])  # duplicates scored once, same answer


def test_equal_length_texts_run_as_one_population_with_the_same_scores(client, causal_handle):
    texts = ["great movie", "bad film", "a b c", "x y z", "great movie", "", "the end of it"]
    lengths = [len(causal_handle.tokenizer(f"{t}\n", add_special_tokens=False)["input_ids"]) for t in texts if t]
    assert len(set(lengths)) < len(lengths) - 1  # some distinct texts share a length: those are batched
    request = EvalRequest(TASK, TRAIN, PromptSpec(mode="text"), texts=texts)
    batched = Engine(causal_handle, discrete_batching=True).discrete_logits(request)
    one_by_one = Engine(causal_handle, discrete_batching=False).discrete_logits(request)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    for i, text in enumerate(texts):  # and each is its own template with the text written in
        template = (text + "\n" if text else "") + TASK.template
        direct = _evaluate(client, EvalRequest(replace(TASK, template=template), TRAIN, PromptSpec(mode="none")))
        np.testing.assert_allclose(batched[i], direct.logits[0], rtol=1e-5, atol=1e-5)


def test_demos_mode_is_icl_with_those_demonstrations(client):
    rows = np.array([[3, 0], [-1, -1], [1, -1]])
    result = _evaluate(client, EvalRequest(POOL, DEV, PromptSpec(mode="demos"), z=rows))
    for row, logits in zip(rows, result.logits):
        demos = tuple(POOL.demos[i] for i in row if i >= 0)
        direct = _evaluate(client, EvalRequest(replace(TASK, demos=demos), DEV, PromptSpec(mode="none")))
        np.testing.assert_allclose(logits, direct.logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "request_kw, message",
    [
        ({"prompt": PromptSpec(mode="text")}, "needs `texts`"),
        ({"prompt": PromptSpec(mode="text"), "texts": ["a {mask} b"]}, "template field"),
        ({"prompt": PromptSpec(mode="demos"), "z": np.array([[99]])}, "outside"),
        ({"prompt": PromptSpec(mode="demos"), "z": np.array([[0.5]])}, "whole"),
    ],
)
def test_bad_discrete_candidates_are_clear_errors(client, request_kw, message):
    with pytest.raises(InvalidRequest, match=message):
        client.engine.evaluate(EvalRequest(POOL, DEV, **request_kw))


def test_texts_travel_on_the_wire_and_split_into_batches():
    request = EvalRequest(TASK, DEV, PromptSpec(mode="text"), texts=["a", "b", "c"])
    decoded = decode_work(encode_work(request), TASK, DEV)
    assert decoded.texts == ["a", "b", "c"] and decoded.population == 3
    from nograd.service.queue.client import QueueClient

    parts = QueueClient(MemoryQueue(), "job", "m", None, batch_size=2)._split(request)
    assert [p.texts for p in parts] == [["a", "b"], ["c"]]


def test_the_renderer_places_prompts_demonstrations_and_label_words():
    text = full_text(replace(TASK, demos=(("fine", None, 1),)), "ok", prompt="be nice")
    assert text == "be nice\nReview: fine\nSentiment: great\n\nReview: ok\nSentiment:"
    assert label_words(TASK) == (" bad", " great") and label_words(replace(TASK, chat=True)) == ("bad", "great")
    with_slot = replace(TASK, template="Q {prompt}: {text} A {mask}")
    assert full_text(with_slot, "x", prompt="hi") == "Q hi: x A"
    assert render(with_slot, "x") == ("Q ", ": x A")
    braces = replace(TASK, template="{{JSON}} {text} -> {{{mask}}}")  # str.format escapes: literal braces
    assert full_text(braces, "x") == "{JSON} x -> {" and label_words(braces) == ("bad", "great")


def _config(method, **kw):
    options = dict(
        method=method,
        budget=30,
        popsize=4,
        dev_every=8,
        seed=1,
        ngram_min_count=2,
        vocab_size=20,
        policy_model="tiny",
        top_k=20,
        mlp_hidden=16,
    )
    options.update(kw)
    return resolved(**options)


async def _search(config, client, task, stop_after=None, state=None):
    search = make_search(config, task, TRAIN, DEV, 3)
    entries = []
    if state is None:
        await search.start(client)
    else:
        search.load_state(state)
    while not search.done and (stop_after is None or search.generation < stop_after):
        entries.append(await search.step(client))
    return search, entries


CASES = [("bbpl", TASK, {}), ("icl_search", POOL, {"prompt_length": 2}), ("rlprompt", TASK, {"prompt_length": 3})]


@pytest.mark.parametrize("method, task, kw", CASES)
def test_budget_dev_selection_and_readable_result(client, method, task, kw):
    search, entries = asyncio.run(_search(_config(method, **kw), client, task))
    assert search.calls == 30 and [len(e["losses"]) for e in entries] == [4] * 7 + [2]
    result = search.result()
    assert result["dev_metric"] >= result["initial"]["dev_metric"]  # the manual prompt is a contender
    assert isinstance(result["text"], str)
    assert result["x"].shape == (kw.get("prompt_length", 10),)


@pytest.mark.parametrize("method, task, kw", CASES)
def test_resume_from_a_json_checkpoint_is_exact(client, method, task, kw):
    config = _config(method, **kw)
    full, full_entries = asyncio.run(_search(config, client, task))
    half, _ = asyncio.run(_search(config, client, task, stop_after=3))
    state = state_from_json(state_to_json(half.state_dict()))
    resumed, rest = asyncio.run(_search(config, client, task, state=state))
    assert [e["losses"] for e in rest] == [e["losses"] for e in full_entries[3:]]
    assert resumed.result()["text"] == full.result()["text"]


@pytest.mark.parametrize("method, task, kw", CASES)
def test_a_runner_resumes_a_discrete_job_from_its_stored_checkpoint(client, method, task, kw):
    """What a runner does with a stored checkpoint (`JobExecutor._resume`: versions checked, restore notes logged),
    for each discrete method's optimizer, RLPrompt's policy included (it has no replay log and nothing to note)."""
    from nograd.service.checkpoints import dump_checkpoint
    from nograd.service.executor import JobExecutor

    config = _config(method, **kw)
    half, _ = asyncio.run(_search(config, client, task, stop_after=3))
    resumed = make_search(config, task, TRAIN, DEV, 3)
    JobExecutor._resume(resumed, {"id": "job_x", "checkpoint": dump_checkpoint(half.state_dict())})
    assert (resumed.generation, resumed.calls) == (half.generation, half.calls)


def test_bbpl_vocabulary_comes_from_the_training_text(client):
    search = make_search(_config("bbpl"), TASK, TRAIN, DEV, 3)
    joined = " ".join(TRAIN.texts).lower()
    assert 2 <= len(search.vocab) <= 20 and all(gram in joined for gram in search.vocab)
    assert search.prompt_text(np.array([0, -1, 1.0])) == f"{search.vocab[0]} {search.vocab[1]}"


def test_icl_search_leaves_out_the_examples_a_candidate_shows(client):
    search = make_search(_config("icl_search", prompt_length=2), POOL, TRAIN, DEV, 3)
    rows = np.array([[0.0, 1.0], [-1.0, -1.0]])
    result = _evaluate(client, search._request(TRAIN, population=rows))
    losses = search._objective(result.logits, np.arange(len(TRAIN)), rows)
    from nograd.clients.losses import all_losses

    keep = np.arange(len(TRAIN)) >= 2
    expected = all_losses(result.logits[0][keep][None], np.asarray(TRAIN.labels)[keep], "accuracy")[0]["ce"][0]
    assert losses[0] == pytest.approx(expected) and losses[1] == pytest.approx(result.loss[1])
    assert search._unique(np.array([3, 3, 1])).tolist() == [3, -1, 1]


def test_rlprompt_reward_is_the_papers_gap():
    logits = np.log(np.array([[[0.7, 0.3], [0.6, 0.4]]]))  # right (gap .4) and wrong (gap -.2) for labels 0, 1
    assert reward(logits, np.array([0, 1]))[0] == pytest.approx((0.4 * 200 - 0.2 * 180) / 2)


def test_rlprompt_policy_gradient_learns_toward_rewarded_tokens(causal_handle):
    from nograd.rlprompt import RLPromptPolicy

    policy = RLPromptPolicy(
        causal_handle.model, causal_handle.tokenizer, length=2, popsize=8, top_k=50, lr=3e-2, hidden=16, seed=0
    )
    position = 0

    def good(prompts):  # rewarded: an even token id at that position
        return prompts[:, position] % 2 == 0

    before = np.mean([good(policy.ask()) for _ in range(3)])
    for _ in range(30):
        prompts = policy.ask()
        policy.tell(prompts, -good(prompts).astype(float))
    after = np.mean([good(policy.ask()) for _ in range(3)])
    assert after > max(0.8, before + 0.2)


def test_rlprompt_soft_q_learning_fits_its_targets(causal_handle):
    from nograd.rlprompt import RLPromptPolicy

    policy = RLPromptPolicy(
        causal_handle.model,
        causal_handle.tokenizer,
        length=3,
        popsize=8,
        top_k=50,
        lr=1e-2,
        hidden=16,
        seed=0,
        learning="sql",
    )
    prompts = policy.ask()
    losses = np.linspace(0, 1, 8)
    first = None
    for _ in range(40):
        policy.tell(prompts, losses)
        first = policy.last_loss if first is None else first
    assert policy.last_loss < 0.5 * first


def test_config_defaults_and_errors():
    assert (_config("bbpl").lr, resolved(method="bbpl").prompt_length) == (1e-4, 10)
    assert resolved(method="rlprompt").popsize == 16
    assert resolved(method="icl_search", task="trec").prompt_length == 2 * 6  # icl_shots x labels
    for options, field, message in [
        ({"method": "bbpl", "lr": 2.0}, "lr", "less than 1"),
        (
            {"method": "bbt", "endpoint": {"kind": "openai", "base_url": "https://x/v1", "model": "m"}},
            "method",
            "bbt sends soft prompts",
        ),
        (
            {"method": "bbtv2", "endpoint": {"kind": "vllm", "base_url": "https://x/v1", "model": "m"}},
            "method",
            "every layer",
        ),
        (
            {"method": "bbt", "mode": "cat", "endpoint": {"kind": "vllm", "base_url": "https://x/v1", "model": "m"}},
            "endpoint.embedder_model",
            "prompt_embeds",
        ),
        (
            {"method": "bbpl", "endpoint": {"kind": "openai", "base_url": "nope", "model": "m"}},
            "endpoint.base_url",
            "http",
        ),
        (
            {
                "method": "bbpl",
                "chat_template": True,
                "endpoint": {"kind": "openai", "base_url": "https://x/v1", "model": "m"},
            },
            "chat_template",
            "api",
        ),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            resolved(**options)
        assert info.value.field == field
    endpoint = {"kind": "openai", "base_url": "https://x/v1", "model": "m", "api": "chat"}
    assert resolved(method="bbpl", endpoint=endpoint).chat_template  # the chat API scores under the template
    assert resolved(method="bbpl", endpoint=endpoint).endpoint["top_logprobs"] == 20  # every setting stored
