"""Nearest vocabulary tokens of soft prompts (the hint a job's analysis shows), on the tiny random causal LM."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from nograd.clients import LocalClient, TokenNeighbor
from nograd.clients.types import ProjectionSpec, PromptSpec
from nograd.engine import Engine, EngineError, FakeEngine


def _vocabulary(handle) -> list[int]:
    special = set(handle.tokenizer.all_special_ids)
    return [i for i in range(len(handle.tokenizer)) if i not in special]


def _z_for(engine: Engine, spec: PromptSpec, target: np.ndarray) -> np.ndarray:
    """The z whose projection A z is exactly `target` (n, H): A is linear, so its columns are the projections
    of the basis vectors, and with d = n * H the system is square."""
    dim = spec.projection.dim
    columns = np.stack([engine.materialize(spec, np.eye(dim)[i]).reshape(-1) for i in range(dim)], axis=1)
    return np.linalg.solve(columns.astype(np.float64), target.reshape(-1).astype(np.float64))


def test_a_cat_prompt_made_of_token_embeddings_has_those_tokens_nearest(causal_handle):
    engine = Engine(causal_handle)
    wanted = _vocabulary(causal_handle)[10:12]
    hidden = causal_handle.hidden_size
    spec = PromptSpec(mode="cat", n_tokens=2, projection=ProjectionSpec(dim=2 * hidden, seed=5))
    rows = causal_handle.embedding.weight.detach().float()[wanted].cpu().numpy()
    z = _z_for(engine, spec, rows)
    np.testing.assert_allclose(engine.prompt_embeddings(spec, z).cpu().numpy(), rows, atol=1e-4)

    neighbours = engine.nearest_tokens(spec, z, 3)
    assert [row[0].id for row in neighbours] == wanted
    for row, token_id in zip(neighbours, wanted):
        assert len(row) == 3 and all(isinstance(n, TokenNeighbor) for n in row)
        assert row[0].similarity == pytest.approx(1.0, abs=1e-4)
        assert row[0].token == causal_handle.tokenizer.decode([token_id])
        assert [n.similarity for n in row] == sorted((n.similarity for n in row), reverse=True)
        assert row[1].similarity < 0.999  # a random model's embeddings are not parallel


def test_the_similarities_are_the_cosines_to_every_token(causal_handle):
    engine = Engine(causal_handle)
    spec = PromptSpec(mode="cat", n_tokens=3, projection=ProjectionSpec(dim=8, seed=1))
    z = np.random.default_rng(0).normal(size=8)
    prompt = engine.prompt_embeddings(spec, z).cpu()
    vocabulary = _vocabulary(causal_handle)
    table = causal_handle.embedding.weight.detach().float().cpu()[vocabulary]
    cosines = torch.nn.functional.cosine_similarity(prompt[:, None], table[None], dim=-1).numpy()
    for position, row in enumerate(engine.nearest_tokens(spec, z, 4)):
        best = np.argsort(-cosines[position])[:4]
        assert [n.id for n in row] == [vocabulary[i] for i in best]
        np.testing.assert_allclose([n.similarity for n in row], cosines[position][best], atol=1e-5)


def test_add_prompts_start_at_their_init_tokens_and_special_tokens_are_never_neighbours(causal_handle):
    engine = Engine(causal_handle)
    init = "the movie was great"
    ids = causal_handle.tokenizer(init, add_special_tokens=False)["input_ids"]
    spec = PromptSpec(mode="add", init=init, projection=ProjectionSpec(dim=8))
    neighbours = engine.nearest_tokens(spec, np.zeros(8), 2)  # z = 0: the init tokens' own embeddings
    assert [row[0].id for row in neighbours] == ids
    special = set(causal_handle.tokenizer.all_special_ids)
    big = engine.nearest_tokens(spec, np.random.default_rng(1).normal(size=8) * 10, 50)
    assert not special & {n.id for row in big for n in row}


def test_zero_positions_have_no_neighbours_and_deep_prompts_are_refused(causal_handle):
    engine = Engine(causal_handle)
    spec = PromptSpec(mode="cat", n_tokens=2, projection=ProjectionSpec(dim=8))
    assert engine.nearest_tokens(spec, np.zeros(8), 3) == [[], []]  # p0 = 0 and A 0 = 0: no direction at all
    with pytest.raises(EngineError, match="cat/add"):
        engine.nearest_tokens(PromptSpec(mode="deep", n_tokens=2, projection=ProjectionSpec(dim=8)), None, 3)
    with pytest.raises(EngineError, match="k must be"):
        engine.nearest_tokens(spec, np.ones(8), 0)


def test_the_local_client_serves_it_and_the_fake_model_cannot(causal_handle):
    spec = PromptSpec(mode="cat", n_tokens=2, projection=ProjectionSpec(dim=8))
    z = np.ones(8)

    async def go():
        local = await LocalClient(Engine(causal_handle)).nearest_tokens(spec, z, 2)
        fake = await LocalClient(FakeEngine()).nearest_tokens(spec, z, 2)
        return local, fake

    local, fake = asyncio.run(go())
    assert len(local) == 2 and all(len(row) == 2 for row in local)
    assert fake is None
