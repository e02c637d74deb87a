"""The fused Llama-family forward (`nograd.engine.fused`) against the Hugging Face forward it replaces: the same
logits to float rounding in fp32 for every prompt mode and reuse, models with q/k/v biases, the fallback for other
architectures, weights shared rather than copied, and the compiled path."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from nograd.clients.types import EvalRequest, Examples, ProjectionSpec, PromptSpec, TaskSpec
from nograd.engine import Engine, EngineError
from nograd.engine.fused import FusedDecoder, can_compile
from nograd.engine.models import handle_from_model

TASK = TaskSpec(template="Review: {text}\nSentiment: {mask}", labels=("neg", "pos"), verbalizer=("bad", "great"))
TEXTS = ["the movie was great", "a dull boring film with bad jokes and awful pacing", "terrible", "what a story"]
EXAMPLES = Examples(texts=TEXTS * 3, labels=[1, 0, 0, 1] * 3)  # 12: two micro-batches, the second one short


def _spec(mode: str, **kw) -> PromptSpec:
    return PromptSpec(mode=mode, n_tokens=4, projection=ProjectionSpec(dim=8, seed=3), **kw)


def _z(population: int = 5) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(population, 8))


def _pair(handle, **kw) -> tuple[Engine, Engine]:
    fused = Engine(handle, compile=False, **kw)
    assert fused.fused is not None
    return fused, Engine(handle, fused=False, **kw)


@pytest.mark.parametrize("mode", ["cat", "add"])
def test_soft_prompts_match_the_hugging_face_forward(causal_handle, mode):
    fused, hf = _pair(causal_handle, memory_cap_mb=0.01)  # one candidate per pass: chunking is covered too
    request = EvalRequest(TASK, EXAMPLES, _spec(mode), z=_z())
    np.testing.assert_allclose(fused.evaluate(request).logits, hf.evaluate(request).logits, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("layer_reuse", [True, False])
def test_deep_prompts_and_frozen_layer_reuse_match(causal_handle, layer, layer_reuse):
    fused, hf = _pair(causal_handle, layer_reuse=layer_reuse)
    scales = hf.evaluate(EvalRequest(TASK, EXAMPLES, _spec("deep"))).scales
    base = np.random.default_rng(1).normal(size=(causal_handle.n_layers, 8))
    request = EvalRequest(TASK, EXAMPLES, _spec("deep", scales=scales), z=_z(), layer=layer, base=base)
    np.testing.assert_allclose(fused.evaluate(request).logits, hf.evaluate(request).logits, atol=1e-5)


def test_discrete_prompts_and_demonstrations_match(causal_handle):
    fused, hf = _pair(causal_handle)
    texts = EvalRequest(TASK, EXAMPLES, PromptSpec(mode="text"), texts=["an instruction", "", "great bad great"])
    np.testing.assert_allclose(fused.evaluate(texts).logits, hf.evaluate(texts).logits, atol=1e-5)
    demos = replace(TASK, demos=((TEXTS[0], None, 1), (TEXTS[2], None, 0)))
    icl = EvalRequest(demos, EXAMPLES, PromptSpec(mode="none"))
    np.testing.assert_allclose(fused.evaluate(icl).logits, hf.evaluate(icl).logits, atol=1e-5)


def test_a_candidate_scores_the_same_alone_and_in_a_population(causal_handle):
    fused = Engine(causal_handle, compile=False)
    z = _z(4)
    together = fused.evaluate(EvalRequest(TASK, EXAMPLES, _spec("add"), z=z)).logits
    for p in range(4):
        alone = fused.evaluate(EvalRequest(TASK, EXAMPLES, _spec("add"), z=z[p : p + 1])).logits
        np.testing.assert_allclose(alone[0], together[p], atol=1e-6)


def test_models_with_qkv_biases(causal_tokenizer):
    """Qwen2's attention has q/k/v biases: they are fused with the weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=1,
    )
    model = Qwen2ForCausalLM(config).eval()
    for layer in model.model.layers:  # random biases, so that a dropped bias shows
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    handle = handle_from_model(model, causal_tokenizer, name="tiny-qwen2", kind="causal")
    request = EvalRequest(TASK, EXAMPLES, _spec("add"), z=_z())
    reference = Engine(handle, fused=False).evaluate(request).logits
    fused = Engine(handle, compile=False)
    assert fused.fused is not None and fused.fused.layers[0].b_qkv is not None
    np.testing.assert_allclose(fused.evaluate(request).logits, reference, atol=1e-5)


def test_weights_are_views_of_the_fused_matrices_and_the_model_still_works(causal_tokenizer):
    from tests.tiny import make_causal

    model = make_causal(layers=2)
    handle = handle_from_model(model, causal_tokenizer, name="tiny", kind="causal")
    ids = torch.tensor([[0, 5, 9, 33, 2]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    decoder = FusedDecoder(handle, compile=False)
    attn, mlp, fused = model.model.layers[0].self_attn, model.model.layers[0].mlp, decoder.layers[0]
    assert attn.q_proj.weight.untyped_storage().data_ptr() == fused.w_qkv.untyped_storage().data_ptr()
    assert attn.v_proj.weight.untyped_storage().data_ptr() == fused.w_qkv.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == fused.w_gu.untyped_storage().data_ptr()
    with torch.inference_mode():
        np.testing.assert_array_equal(model(input_ids=ids).logits.numpy(), before.numpy())


def test_other_architectures_take_the_hugging_face_forward(masked_handle, causal_handle):
    assert FusedDecoder.supports(masked_handle) == "not a causal LM"
    assert Engine(masked_handle).fused is None
    assert Engine(causal_handle, prefix_reuse=False).fused is None  # the fused path is the prefix-reuse path
    with pytest.raises(EngineError, match="fused forward does not serve"):
        Engine(masked_handle, fused=True)


def test_compiling_is_opt_in_on_a_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("NOGRAD_COMPILE", raising=False)
    assert can_compile(cpu) is False
    monkeypatch.setenv("NOGRAD_COMPILE", "0")
    assert can_compile(torch.device("cuda")) is False
    monkeypatch.setenv("NOGRAD_COMPILE", "1")
    assert can_compile(cpu) is (shutil.which("g++") is not None)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile needs a C++ compiler on a CPU")
def test_the_compiled_forward_scores_what_the_eager_one_does(causal_handle):
    """torch.compile of the fused layers (what NOGRAD_COMPILE=1 turns on): the same logits to float rounding, the
    compile time counted apart, and no new graph for another population size."""
    from torch._dynamo.utils import counters

    request = EvalRequest(TASK, EXAMPLES, _spec("add"), z=_z())
    eager = Engine(causal_handle, compile=False).evaluate(request).logits
    engine = Engine(causal_handle, compile=True)
    assert engine.fused.compiled
    np.testing.assert_allclose(engine.evaluate(request).logits, eager, atol=1e-4)
    assert engine.fused.compile_seconds > 0
    graphs = counters["stats"]["unique_graphs"]
    smaller = EvalRequest(TASK, EXAMPLES, _spec("add"), z=_z(3))
    np.testing.assert_allclose(engine.evaluate(smaller).logits, eager[:3], atol=1e-4)
    assert engine.fused.compiled  # it did not fall back to eager
    assert counters["stats"]["unique_graphs"] == graphs
