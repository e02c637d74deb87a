"""The OpenAI-compatible client against a fake server: label scores, the floor, usage, retries (429 storms with
Retry-After, 500s, timeouts, malformed JSON), missing logprobs, chat, secrets hygiene, the URL allowlist."""

from __future__ import annotations

import asyncio
import math
import socket
from dataclasses import replace

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from nograd.clients import InvalidRequest, ModelClient
from nograd.clients.endpoint import EndpointConfigError, RemoteError
from nograd.clients.guard import check_url, guarded_transport
from nograd.clients.kinds import parse_endpoint
from nograd.clients.labels import label_scores
from nograd.clients.openai import OpenAIClient
from nograd.clients.types import EvalRequest, Examples, PromptSpec, TaskSpec

TASK = TaskSpec(template="Review: {text} It was {mask}.", labels=("neg", "pos"), verbalizer=("bad", "great"))
EXAMPLES = Examples(texts=["a great film", "bad, bad acting", "it is what it is"], labels=[1, 0, 1])
KEY = "sk-test-0123456789-very-secret"


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset(server):
    server.faults.clear()
    server.requests.clear()
    server.tokenize_requests.clear()
    server.headers.clear()
    server.tokenizer, server.bias_reporting = True, "raw"


def _client(server, api="completions", **kw) -> OpenAIClient:
    options = dict(kind="openai", base_url=server.url, model="fake", api=api, backoff=0.01, timeout=1.0)
    options.update(kw)
    return OpenAIClient(parse_endpoint(options), KEY)


def _text_request(texts=("", "great great"), api="completions") -> EvalRequest:
    """Under the chat API the job scores under the chat template (`TaskSpec.chat`), as resolution sets it."""
    return EvalRequest(replace(TASK, chat=api == "chat"), EXAMPLES, PromptSpec(mode="text"), texts=list(texts))


def _run(client, request):
    async def go():
        try:
            return await client.evaluate(request)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_label_scores_come_from_first_token_logprobs(server, api):
    client = _client(server, api)
    assert isinstance(client, ModelClient)
    result = _run(client, _text_request(api=api))
    assert result.logits.shape == (2, 3, 2)
    # The same texts the fake scored: its log-probabilities of " bad" / " great" for each rendered input.
    prompts = [r["prompt"] if api == "completions" else r["messages"][-1]["content"] for r in server.requests]
    assert len(prompts) == 6 == result.usage["requests"]  # 2 candidates x 3 examples, all distinct
    first = "Review: a great film It was"
    assert first in prompts and "great great\nReview: a great film It was" in prompts
    expected = FakeOpenAI.top(first)
    assert result.logits[0, 0].tolist() == pytest.approx([expected[" bad"], expected[" great"]])
    # The prompt naming "great" raises the gold label's score on positive examples.
    assert result.logits[1, 0, 1] > result.logits[0, 0, 1]
    assert result.usage["prompt_tokens"] > 0 and result.usage["completion_tokens"] == 6
    assert all(r.get("max_tokens") == 1 and r.get("temperature") == 0 for r in server.requests)
    assert all(h["authorization"] == f"Bearer {KEY}" for h in server.headers)


def test_missing_label_word_gets_the_floor_and_is_counted(server):
    server.faults[:] = ["drop: bad"] * 3
    server.tokenizer = False  # no token id: the word cannot be asked for again
    client = _client(server, top_logprobs=20)
    result = _run(client, _text_request(texts=[""]))
    assert result.usage["missing_label_words"] == 3 and result.usage["label_scores"] == 6
    by_prompt = {r["prompt"]: min(FakeOpenAI.top(r["prompt"], drop=" bad").values()) - 1.0 for r in server.requests}
    floors = [by_prompt[f"Review: {t} It was"] for t in EXAMPLES.texts]
    assert [row[0] for row in result.logits[0]] == pytest.approx(floors)


@pytest.mark.parametrize("api,reporting", [("completions", "raw"), ("completions", "biased"), ("chat", "raw")])
def test_missing_label_word_is_rescored_with_logit_bias(server, api, reporting):
    server.faults[:] = ["drop: bad"] * 6  # the first answer and the biased one both leave " bad" out of the list
    server.bias_reporting = reporting
    result = _run(_client(server, api), _text_request(texts=[""], api=api))
    assert result.usage["rescored_label_words"] == 3 and result.usage["missing_label_words"] == 0
    exact = [FakeOpenAI.top(f"Review: {t} It was")[" bad"] for t in EXAMPLES.texts]
    assert result.logits[0, :, 0] == pytest.approx(exact, abs=1e-6)
    biased = [r for r in server.requests if r.get("logit_bias")]
    assert len(biased) == 3 and all(r["logit_bias"] == {"101": 100.0} for r in biased)
    # The tokenizer is asked once per word as it follows the text (no space under a chat template: it starts the
    # answer), and once for the empty string, to strip its BOS; then remembered.
    assert sorted(r["prompt"] for r in server.tokenize_requests) == ["", " bad" if api == "completions" else "bad"]


def test_rescoring_falls_back_to_the_floor_when_the_bias_is_ignored(server):
    server.faults[:] = ["drop: bad"] * 6
    server.bias_reporting = "ignore"
    result = _run(_client(server), _text_request(texts=[""]))
    assert result.usage["rescored_label_words"] == 0 and result.usage["missing_label_words"] == 3
    assert (result.logits[0, :, 0] < result.logits[0, :, 1]).all()


def test_label_token_ids_from_the_config_need_no_tokenizer(server):
    server.faults[:] = ["drop: bad"] * 6
    server.tokenizer = False
    result = _run(_client(server, label_token_ids={"bad": 101}), _text_request(texts=[""]))
    assert result.usage["rescored_label_words"] == 3 and not server.tokenize_requests
    assert result.logits[0, 0, 0] == pytest.approx(FakeOpenAI.top("Review: a great film It was")[" bad"])


def test_label_score_matching_rules():
    top = {" Great": -1.0, "neg": -2.0, " the": -3.0, "n": -0.1, " Fine": -0.5, " fine": -1.5}
    scores, missing = label_scores(top, (" great", " negative", " bad"), floor_margin=1.0)
    assert scores[:2] == [-1.0, -2.0]  # case-insensitive when nothing matches exactly; a >= 3-character prefix
    assert label_scores(top, (" fine",), 1.0)[0] == [-1.5]  # the exact case wins over a likelier capital
    assert scores[2] == -4.0 and missing == 1  # one-letter "n" never stands for a word; the floor is min - 1


def test_429_storm_is_retried_honouring_retry_after(server):
    server.faults[:] = ["429"] * 8
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    client = _client(server, max_retries=10, concurrency=1)
    client._sleep = sleep
    result = _run(client, _text_request(texts=[""]))
    assert result.logits.shape == (1, 3, 2)
    assert result.usage["retries"] == 8 and slept == [pytest.approx(0.01)] * 8  # the header, not the backoff


def test_500s_and_timeouts_are_retried(server):
    server.faults[:] = ["500", "timeout", "500"]
    result = _run(_client(server, timeout=0.3, concurrency=1), _text_request(texts=[""]))
    assert result.usage["retries"] == 3 and np.isfinite(result.logits).all()


def test_malformed_json_retries_then_gives_up_with_a_clear_error(server):
    server.faults[:] = ["malformed"] * 10
    with pytest.raises(RemoteError, match="not JSON.*gave up after 3 attempts"):
        _run(_client(server, max_retries=2, concurrency=1), _text_request(texts=[""]))


def test_missing_logprobs_fails_at_once(server):
    server.faults[:] = ["nologprobs"] * 10
    with pytest.raises(RemoteError, match="must support logprobs") as info:
        _run(_client(server, concurrency=1), _text_request(texts=[""]))
    assert KEY not in str(info.value)


def test_key_never_in_repr_or_errors(server):
    client = _client(server)
    assert KEY not in repr(client) and KEY not in repr(client.config)
    bad = OpenAIClient(
        parse_endpoint(
            {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 0, "timeout": 0.5}
        ),
        KEY,
    )
    with pytest.raises(RemoteError) as info:
        _run(bad, _text_request(texts=[""]))
    assert KEY not in str(info.value)


def test_chat_api_and_chat_template_must_agree(server):
    with pytest.raises(InvalidRequest, match="chat template"):
        _run(_client(server, "chat"), _text_request(api="completions"))
    with pytest.raises(InvalidRequest, match="chat template"):
        _run(_client(server, "completions"), _text_request(api="chat"))


def test_soft_prompts_are_refused_by_a_text_only_endpoint(server):
    request = EvalRequest(TASK, EXAMPLES, PromptSpec(mode="add", n_tokens=2), z=np.zeros((1, 500)))
    with pytest.raises(InvalidRequest, match="text only"):
        _run(_client(server), request)


def test_demos_mode_renders_demonstrations(server):
    task = TaskSpec(
        template=TASK.template,
        labels=TASK.labels,
        verbalizer=TASK.verbalizer,
        demos=(("loved it", None, 1), ("hated it", None, 0)),
    )
    request = EvalRequest(
        task, Examples(texts=["fine"], labels=[1]), PromptSpec(mode="demos"), z=np.array([[1, 0], [-1, -1]])
    )
    _run(_client(server), request)
    assert sorted(r["prompt"] for r in server.requests) == [
        "Review: fine It was",
        "Review: hated it It was bad.\n\nReview: loved it It was great.\n\nReview: fine It was",
    ]


def _resolver(address):
    return lambda host, port: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.5", "169.254.169.254", "172.16.0.1"])
def test_private_and_loopback_hosts_are_denied_by_default(address):
    with pytest.raises(EndpointConfigError, match="NOGRAD_REMOTE_ALLOW"):
        check_url("https://internal.example/v1", resolve=_resolver(address))


def test_allowlist_admits_hosts_and_networks():
    check_url("https://api.example.com/v1", resolve=_resolver("93.184.216.34"))  # public: fine
    check_url("http://internal.example/v1", allow=("internal.example",), resolve=_resolver("10.0.0.1"))
    check_url("http://gpu-box/v1", allow=("10.0.0.0/8",), resolve=_resolver("10.4.4.4"))
    with pytest.raises(EndpointConfigError):
        check_url("http://gpu-box/v1", allow=("10.0.0.0/16",), resolve=_resolver("10.4.4.4"))


@pytest.mark.parametrize(
    "data, field, message",
    [
        ({"kind": "openai", "base_url": "ftp://x/v1", "model": "m"}, "base_url", "http"),
        ({"kind": "openai", "base_url": "https://u:p@x/v1", "model": "m"}, "base_url", "credentials"),
        ({"kind": "grpc", "base_url": "https://x/v1", "model": "m"}, "kind", "openai, vllm"),
        ({"kind": "openai", "base_url": "https://x/v1"}, "model", "required"),
        ({"kind": "openai", "base_url": "https://x/v1", "model": "m", "api_key": "sk"}, "api_key", "not an endpoint"),
        (
            {"kind": "openai", "base_url": "https://x/v1", "model": "m", "label_token_ids": {"pos": "12"}},
            "label_token_ids",
            "integer",
        ),
        ({"kind": "openai", "base_url": "https://x/v1", "model": "m", "timeout": float("nan")}, "timeout", "finite"),
        ({"kind": "openai", "base_url": "https://x/v1", "model": "m", "concurrency": 1000}, "concurrency", "64"),
    ],
)
def test_endpoint_config_errors_name_the_field(data, field, message):
    with pytest.raises(EndpointConfigError, match=message) as info:
        parse_endpoint(data)
    assert info.value.field == field


def test_floor_is_below_every_returned_score():
    top = FakeOpenAI.top("anything", drop=" great")
    scores, missing = label_scores(top, (" great",), 1.0)
    assert missing == 1 and scores[0] < min(top.values()) and math.isfinite(scores[0])


# ------------------------------------------------------------------ the allowlist at connect time
def test_every_connection_is_checked_against_the_allowlist(server):
    denied = _client(server)
    denied = OpenAIClient(denied.config, KEY, allow=())
    with pytest.raises(RemoteError, match="127.0.0.1, a private or reserved address.*NOGRAD_REMOTE_ALLOW"):
        _run(denied, _text_request(texts=[""]))
    assert not server.requests  # refused before connecting
    allowed = OpenAIClient(denied.config, KEY, allow=("127.0.0.0/8",))
    assert _run(allowed, _text_request(texts=[""])).usage["requests"] == 3


def test_dns_rebinding_is_caught_when_connecting(server):
    """A name that passed the submit-time check (public address then) and resolves to an internal one later is
    refused at connect time; an allowed address is connected to as resolved and checked."""
    check_url("http://api.example.com/v1", resolve=lambda host, port: [(2, 1, 6, "", ("93.184.216.34", 0))])

    async def rebound(host, port):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    config = parse_endpoint(
        {
            "kind": "openai",
            "base_url": f"http://api.example.com:{server.port}/v1",
            "model": "fake",
            "backoff": 0.01,
            "timeout": 2.0,
        }
    )
    with pytest.raises(RemoteError, match="'api.example.com' resolves to 127.0.0.1"):
        _run(OpenAIClient(config, transport=guarded_transport((), resolve=rebound)), _text_request(texts=[""]))
    assert not server.requests
    ok = OpenAIClient(config, transport=guarded_transport(("127.0.0.1/32",), resolve=rebound))
    assert _run(ok, _text_request(texts=[""])).usage["requests"] == 3
    assert all(h["host"] == f"api.example.com:{server.port}" for h in server.headers)  # the name, not the address
