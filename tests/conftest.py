"""Shared fixtures: tiny randomly initialised models built from configs, with a small trained tokenizer."""

from __future__ import annotations

import pytest

from tiny import _tokenizer, make_causal, make_masked


@pytest.fixture(scope="session")
def causal_tokenizer():
    return _tokenizer(masked=False)


@pytest.fixture(scope="session")
def masked_tokenizer():
    return _tokenizer(masked=True)


@pytest.fixture(scope="session")
def causal_handle(causal_tokenizer):
    from service.engine.models import handle_from_model
    return handle_from_model(make_causal(), causal_tokenizer, name="tiny-llama", kind="causal")


@pytest.fixture(scope="session")
def masked_handle(masked_tokenizer):
    from service.engine.models import handle_from_model
    return handle_from_model(make_masked(), masked_tokenizer, name="tiny-roberta", kind="masked")
