"""Contract tests of the evaluation engine on tiny random models (a Llama-style causal LM and RobertaForMaskedLM)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nograd.clients.types import EvalRequest, Examples, InvalidRequest, ProjectionSpec, PromptSpec, TaskSpec
from nograd.engine import ContextLengthError, Engine, EngineError, VerbalizerError
from nograd.engine.projection import Projections

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
TEXTS = [
    "the movie was great",
    "a dull boring film with bad jokes and awful pacing",
    "terrible",
    "what a wonderful story , the acting superb",
]
EXAMPLES = Examples(texts=TEXTS, labels=[1, 0, 0, 1])
MODES = ["none", "cat", "add", "deep"]


def _spec(mode: str, n_tokens: int = 4, **kw) -> PromptSpec:
    return PromptSpec(mode=mode, n_tokens=n_tokens, projection=ProjectionSpec(dim=8, seed=3, **kw))


def _z(population: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(population, 8))


def _request(
    mode: str, examples=EXAMPLES, task=TASK, population: int = 3, layer: int = 2, scales=None, **kw
) -> EvalRequest:
    z = None if mode == "none" else _z(population)
    spec = PromptSpec(**{**_spec(mode).__dict__, "scales": scales})
    return EvalRequest(task=task, examples=examples, prompt=spec, z=z, layer=layer if mode == "deep" else None, **kw)


@pytest.fixture(params=["causal", "masked"])
def handle(request, causal_handle, masked_handle):
    return causal_handle if request.param == "causal" else masked_handle


@pytest.mark.parametrize("mode", MODES)
def test_padding_never_changes_logits(handle, mode):
    """Each example scored alone (no padding) equals the example scored inside a padded batch."""
    engine = Engine(handle)
    result = engine.evaluate(_request(mode))
    batched = result.logits
    for i, text in enumerate(TEXTS):
        alone = engine.evaluate(
            _request(mode, examples=Examples(texts=[text], labels=[EXAMPLES.labels[i]]), scales=result.scales)
        ).logits
        np.testing.assert_allclose(alone[:, 0], batched[:, i], atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_population_equals_one_candidate_at_a_time(handle, mode):
    engine = Engine(handle)
    batched = engine.evaluate(_request(mode))
    if mode == "none":
        assert batched.logits.shape == (1, 4, 2)
        return
    z = _z(3)
    for p in range(3):
        single = engine.evaluate(
            EvalRequest(TASK, EXAMPLES, _spec(mode), z=z[p : p + 1], layer=2 if mode == "deep" else None)
        )
        np.testing.assert_allclose(single.logits[0], batched.logits[p], atol=1e-5)


@pytest.mark.parametrize("mode", ["cat", "add", "deep"])
def test_reuses_are_exact(causal_handle, mode):
    """Prefix reuse and frozen-layer reuse give the same logits as plain full-sequence forwards."""
    reference = Engine(causal_handle, prefix_reuse=False, layer_reuse=False).evaluate(_request(mode)).logits
    for prefix_reuse in (True, False):
        for layer_reuse in (True, False):
            engine = Engine(causal_handle, prefix_reuse=prefix_reuse, layer_reuse=layer_reuse)
            np.testing.assert_allclose(engine.evaluate(_request(mode)).logits, reference, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_frozen_layer_reuse_every_layer(handle, layer):
    reference = Engine(handle, layer_reuse=False).evaluate(_request("deep", layer=layer)).logits
    reused = Engine(handle, layer_reuse=True).evaluate(_request("deep", layer=layer)).logits
    np.testing.assert_allclose(reused, reference, atol=1e-5)


def test_icl_prefix_reuse_is_exact(causal_handle):
    task = TaskSpec(
        template=TASK.template,
        labels=TASK.labels,
        verbalizer=TASK.verbalizer,
        demos=(("a wonderful story", None, 1), ("awful pacing", None, 0)),
    )
    plain = Engine(causal_handle, prefix_reuse=False).evaluate(_request("none", task=task)).logits
    reused = Engine(causal_handle, prefix_reuse=True).evaluate(_request("none", task=task)).logits
    np.testing.assert_allclose(reused, plain, atol=1e-5)
    without_demos = Engine(causal_handle).evaluate(_request("none")).logits
    assert not np.allclose(without_demos, plain)


def test_prompt_placeholder_after_an_instruction(causal_handle, causal_tokenizer):
    task = TaskSpec(
        template="Task: {prompt}\nReview: {text}\nSentiment: {mask}", labels=TASK.labels, verbalizer=TASK.verbalizer
    )
    request = _request("add", task=task)
    layout = Engine(causal_handle).layout(request)
    instruction = causal_tokenizer("Task: ", add_special_tokens=False)["input_ids"]
    bos = [causal_tokenizer.bos_token_id]
    assert layout.prefix_ids.tolist()[: len(bos) + len(instruction)] == bos + instruction
    assert layout.slots.tolist() == list(range(len(bos) + len(instruction), len(bos) + len(instruction) + 4))
    plain = Engine(causal_handle, prefix_reuse=False).evaluate(request).logits
    np.testing.assert_allclose(Engine(causal_handle).evaluate(request).logits, plain, atol=1e-5)


def test_memory_cap_chunking_is_exact(causal_handle):
    whole = Engine(causal_handle, memory_cap_mb=1024).evaluate(_request("add", population=5)).logits
    tiny = Engine(causal_handle, memory_cap_mb=0.001).evaluate(_request("add", population=5)).logits
    np.testing.assert_allclose(tiny, whole, atol=1e-5)


@pytest.mark.parametrize("mode", ["cat", "add", "deep"])
def test_injection_changes_logits_and_zero_matches_base(causal_handle, mode):
    engine = Engine(causal_handle)
    result = engine.evaluate(_request(mode))
    assert not np.allclose(result.logits[0], result.logits[1])
    zero = engine.evaluate(
        EvalRequest(TASK, EXAMPLES, _spec(mode), z=np.zeros((1, 8)), layer=1 if mode == "deep" else None)
    ).logits
    if mode in ("add", "deep"):  # z = 0 leaves the placeholder tokens as they are
        unprompted = engine.evaluate(EvalRequest(TASK, EXAMPLES, _spec(mode))).logits
        np.testing.assert_allclose(zero, unprompted, atol=1e-6)


def test_cat_p0_from_init_text(causal_handle):
    engine = Engine(causal_handle)
    spec = PromptSpec(mode="cat", projection=ProjectionSpec(dim=8), init="an instruction about the task")
    add_spec = PromptSpec(mode="add", projection=ProjectionSpec(dim=8), init="an instruction about the task")
    cat = engine.evaluate(EvalRequest(TASK, EXAMPLES, spec, z=np.zeros((1, 8)))).logits
    add = engine.evaluate(EvalRequest(TASK, EXAMPLES, add_spec, z=np.zeros((1, 8)))).logits
    np.testing.assert_allclose(cat, add, atol=1e-6)  # p0 = embeddings of the init text


def test_projection_is_deterministic_and_scaled():
    spec = ProjectionSpec(seed=7, dim=50, alpha=0.5, sigma0=2.0)
    a = Projections().unit_matrix(spec, 3, 600)
    b = Projections().unit_matrix(spec, 3, 600)
    assert torch.equal(a, b)
    assert not torch.equal(a, Projections().unit_matrix(spec, 4, 600))
    assert not torch.equal(a, Projections().unit_matrix(ProjectionSpec(seed=8, dim=50), 3, 600))
    z = np.random.default_rng(0).normal(scale=2.0, size=(2000, 50))  # z ~ N(0, sigma0^2)
    prompt = Projections().materialize(spec, z, 3, 2, 300, scale=0.1)
    assert abs(float(prompt.std()) - 0.5 * 0.1) < 0.005  # coordinate std ~ alpha * scale
    uniform = Projections().unit_matrix(ProjectionSpec(dim=50, distribution="uniform"), 0, 100)
    assert float(uniform.abs().max()) <= 1 / np.sqrt(50)


def test_deep_scales_pinned_and_clipped(causal_handle):
    engine = Engine(causal_handle)
    result = engine.evaluate(_request("deep"))
    assert len(result.scales) == causal_handle.n_layers and all(s > 0 for s in result.scales)
    assert result.scales[0] == pytest.approx(causal_handle.embedding_std())
    # Pinned scales make other example sets use the same projection.
    spec = PromptSpec(**{**_spec("deep").__dict__, "scales": result.scales})
    other = Examples(texts=["terrible"], labels=[0])
    pinned = engine.evaluate(EvalRequest(TASK, other, spec, z=_z(3), layer=2)).logits
    derived = engine.evaluate(EvalRequest(TASK, other, _spec("deep"), z=_z(3), layer=2)).logits
    assert not np.allclose(pinned, derived)


def test_losses(causal_handle):
    result = Engine(causal_handle).evaluate(_request("add"))
    logits, labels = result.logits, np.asarray(EXAMPLES.labels)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -log_probs[:, np.arange(4), labels].mean(-1)
    np.testing.assert_allclose(result.losses["ce"], ce, rtol=1e-6)
    gold = logits[:, np.arange(4), labels]
    other = logits[:, np.arange(4), 1 - labels]
    np.testing.assert_allclose(result.losses["hinge"], np.maximum(0, other - gold + 2).mean(-1), rtol=1e-6)
    accuracy = (logits.argmax(-1) == labels).mean(-1)
    np.testing.assert_allclose(result.losses["perf"], -accuracy)
    np.testing.assert_allclose(result.metric, accuracy)


def test_label_head_matches_full_lm_head(handle):
    """The restricted head equals the model's own logits at the scored position (no prompt)."""
    engine = Engine(handle)
    request = _request("none")
    layout = engine.layout(request)
    logits = engine.evaluate(request).logits[0]
    for i in range(len(TEXTS)):
        n = int(layout.body_mask[i].sum())
        ids = torch.cat([layout.prefix_ids, layout.body_ids[i, :n]])[None].to(handle.device)
        with torch.no_grad():
            full = handle.model(input_ids=ids).logits[0, len(layout.prefix_ids) + int(layout.score_pos[i])]
        np.testing.assert_allclose(logits[i], full[layout.label_ids].cpu().numpy(), atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_labels_sharing_a_first_token(causal_handle):
    task = TaskSpec(template=TASK.template, labels=("a", "b"), verbalizer=("great", "greatest"))
    with pytest.raises(VerbalizerError, match="share the first token"):
        Engine(causal_handle).evaluate(EvalRequest(task, EXAMPLES, _spec("none")))


def test_text_beyond_context(causal_handle):
    long = Examples(texts=["great " * 400], labels=[1])
    with pytest.raises(ContextLengthError, match="context is 256"):
        Engine(causal_handle).evaluate(EvalRequest(TASK, long, _spec("none")))


@pytest.mark.parametrize(
    "request_kw, message",
    [
        ({"z": np.zeros((2, 5))}, "shape"),
        ({"z": np.full((2, 8), np.nan)}, "NaN"),
        ({"loss": "mse"}, "loss"),
    ],
)
def test_bad_candidates(causal_handle, request_kw, message):
    kw = {"z": _z(2), **request_kw}
    with pytest.raises(InvalidRequest, match=message):
        Engine(causal_handle).evaluate(EvalRequest(TASK, EXAMPLES, _spec("add"), **kw))


def test_deep_needs_layer_and_bad_template(causal_handle):
    with pytest.raises(EngineError, match="layer"):
        Engine(causal_handle).evaluate(EvalRequest(TASK, EXAMPLES, _spec("deep"), z=_z(2)))
    bad = TaskSpec(template="{text} {prompt} {mask}", labels=TASK.labels, verbalizer=TASK.verbalizer)
    with pytest.raises(InvalidRequest, match="before"):
        Engine(causal_handle).evaluate(EvalRequest(bad, EXAMPLES, _spec("add"), z=_z(2)))
    with pytest.raises(EngineError, match="empty"):
        Engine(causal_handle).evaluate(EvalRequest(TASK, Examples(texts=[], labels=[]), _spec("none")))


@pytest.mark.parametrize("mode", MODES)
def test_scores_do_not_depend_on_the_memory_cap_in_bf16(causal_handle, mode):
    """Fixed micro-batches: whatever the cap, every example is padded with the same neighbours, and a candidate's
    rows are the same whether it shares a pass with others or runs alone: the logits are equal bit for bit."""
    from tiny import make_causal

    from nograd.engine.models import handle_from_model

    bf16 = handle_from_model(
        make_causal().to(torch.bfloat16), causal_handle.tokenizer, name="tiny-bf16", device=str(causal_handle.device)
    )
    examples = Examples(texts=[t + " " + "and so on " * i for i in range(5) for t in TEXTS], labels=[1, 0, 0, 1] * 5)
    request = _request(mode, examples=examples, population=6, scales=None)
    tight, roomy = Engine(bf16, memory_cap_mb=0.01), Engine(bf16, memory_cap_mb=4096)
    assert (
        tight._candidates_per_pass(tight.layout(request), 6) == 1 < roomy._candidates_per_pass(roomy.layout(request), 6)
    )
    first = tight.evaluate(request)
    second = roomy.evaluate(replace(request, prompt=replace(request.prompt, scales=first.scales)))
    np.testing.assert_array_equal(first.logits, second.logits)


CHAT = "{% for m in messages %}<s>user: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>{% endif %}"


@pytest.fixture
def chat_handle(causal_handle):
    """The tiny causal model with a chat template on a copy of its tokenizer."""
    import copy

    tokenizer = copy.deepcopy(causal_handle.tokenizer)
    tokenizer.chat_template = CHAT
    return replace(causal_handle, tokenizer=tokenizer)


def test_chat_template_scores_the_templated_text_and_keeps_soft_prompt_slots_inside(chat_handle):
    engine = Engine(chat_handle)
    task = replace(TASK, chat=True)
    request = EvalRequest(task, EXAMPLES, PromptSpec(mode="text"), texts=["", "great"])
    sequences, label_ids = engine.scored_tokens(request)
    tokenizer = chat_handle.tokenizer
    for candidate, text in zip(sequences, ["", "great\n"]):
        for ids, example in zip(candidate, EXAMPLES.texts):
            content = f"{text}Review: {example}\nSentiment:"
            templated = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
            assert ids == tokenizer(templated, add_special_tokens=False)["input_ids"]
    assert label_ids == [
        tokenizer("bad", add_special_tokens=False)["input_ids"][0],
        tokenizer("great", add_special_tokens=False)["input_ids"][0],
    ]  # the answer: no space
    soft = EvalRequest(task, EXAMPLES, _spec("add"), z=_z(2))
    layout = engine.layout(soft)
    head = tokenizer("<s>user: ", add_special_tokens=False)["input_ids"]
    assert layout.slots.tolist() == list(range(len(head), len(head) + 4))
    assert layout.prefix_ids[: len(head)].tolist() == head
    assert engine.evaluate(soft).logits.shape == (2, 4, 2)


def test_chat_template_needs_a_causal_lm_with_a_template(causal_handle, masked_handle):
    request = EvalRequest(replace(TASK, chat=True), EXAMPLES, PromptSpec(mode="none"))
    with pytest.raises(EngineError, match="no chat template"):
        Engine(causal_handle).evaluate(request)
    with pytest.raises(EngineError, match="causal"):
        Engine(masked_handle).evaluate(request)
