"""The endpoint kinds registry: each remote endpoint kind, its client class and the prompt modes it serves, read by
everything that checks or lists kinds (endpoint settings, the method registry, the REST schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from nograd.validation import validate

from .endpoint import EndpointConfig, EndpointConfigError
from .openai import OpenAIClient
from .vllm import Embedder, VLLMClient

#: kind name -> client class (`kind`, `description`, `prompt_modes` and `embeds_locally` are class attributes).
ENDPOINT_KINDS: Mapping[str, type[OpenAIClient]] = {cls.kind: cls for cls in (OpenAIClient, VLLMClient)}


def parse_endpoint(data: Mapping[str, Any]) -> EndpointConfig:
    """Endpoint settings from a JSON object, every field checked; raises `EndpointConfigError` naming the field."""
    values = {k: v for k, v in dict(data).items() if v is not None} if isinstance(data, Mapping) else data
    config = validate(EndpointConfig, values, what="an endpoint setting", error=EndpointConfigError)
    if config.kind not in ENDPOINT_KINDS:
        raise EndpointConfigError("kind", f"{config.kind!r} is unknown; use one of {', '.join(ENDPOINT_KINDS)}")
    url = urlsplit(config.base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EndpointConfigError("base_url", "must be an http(s) URL with a host, e.g. https://api.openai.com/v1")
    if "@" in url.netloc:  # an empty user (http://@host) too: one URL, one reading
        raise EndpointConfigError("base_url", "must not carry credentials; store the key as a secret")
    if any(not word.strip() for word in config.label_token_ids or {}):
        raise EndpointConfigError(
            "label_token_ids", 'map each label word to its first token\'s id (an int >= 0), e.g. {"positive": 3967}'
        )
    return config


def remote_client(
    config: EndpointConfig, api_key: str | None = None, *, embedder: Embedder | None = None, **options: Any
) -> OpenAIClient:
    """The client of `config.kind` (`options`: `allow`, `limits`, `transport`, `sleep`; see `OpenAIClient`)."""
    cls = ENDPOINT_KINDS[config.kind]
    if cls.embeds_locally:
        return cls(config, api_key, embedder=embedder, **options)
    return cls(config, api_key, **options)
