"""A remote endpoint's settings (`EndpointConfig`), the operator's limits on it (`RemoteLimits`) and the errors remote
endpoints raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from nograd.validation import FieldError


class EndpointConfigError(FieldError):
    """An endpoint setting is invalid; `field` names it and the message says how to fix it."""


class RemoteError(RuntimeError):
    """The remote endpoint failed in a way retries cannot fix (or retries ran out)."""


class ResponseTooLarge(RemoteError):
    """A response body passed `RemoteLimits.max_response_bytes`; reading stopped there. Final: not retried (an
    endpoint that answers this way once will again, and every retry would read as much)."""


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to reach a remote model; build one with `nograd.clients.kinds.parse_endpoint`, which checks every
    field. `api_key_secret` names a tenant secret (the CLI: an environment variable), never the key itself."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Annotated[str, Field(description="the endpoint kind (clients.kinds.ENDPOINT_KINDS)")]
    base_url: Annotated[str, Field(min_length=1, max_length=500, description="e.g. https://api.openai.com/v1")]
    model: Annotated[str, Field(min_length=1, max_length=200, description="the model name the endpoint expects")]
    api: Annotated[
        Literal["completions", "chat"],
        Field(
            description="completions: the rendered text is the prompt; chat: it is the user message and the server "
            "applies the model's chat template (the job then scores under the chat template)"
        ),
    ] = "completions"
    api_key_secret: Annotated[
        str | None,
        Field(
            max_length=100,
            description="name of a secret holding the API key (POST /v1/secrets; from the CLI an environment variable)",
        ),
    ] = None
    top_logprobs: Annotated[int, Field(ge=1, le=100, description="log-probabilities asked for per request")] = 20
    concurrency: Annotated[int, Field(ge=1, le=64, description="requests in flight at once")] = 4
    timeout: Annotated[float, Field(gt=0, le=600, description="seconds per request")] = 60.0
    max_retries: Annotated[int, Field(ge=0, le=20, description="retries of 429s, 5xx, timeouts")] = 6
    backoff: Annotated[float, Field(ge=0, le=60, description="first retry's backoff scale, seconds")] = 0.5
    max_backoff: Annotated[float, Field(ge=0, le=600, description="longest wait between retries, seconds")] = 30.0
    floor_margin: Annotated[
        float,
        Field(
            ge=0,
            le=1000,
            description="a label word without a score gets the lowest returned log-probability minus this",
        ),
    ] = 1.0
    rescore_missing: Annotated[
        bool, Field(description="ask again with logit_bias for a label word without an exact match in the top list")
    ] = True
    label_token_ids: Annotated[
        dict[Annotated[str, Field(max_length=200)], Annotated[int, Field(ge=0, strict=True)]] | None,
        Field(
            max_length=1000,
            description="label word -> the endpoint's id of its first token (else the server's "
            'tokenizer route is asked), e.g. {"positive": 3967}',
        ),
    ] = None
    embedder_model: Annotated[
        str | None,
        Field(
            max_length=500,
            description="vllm + bbt: the served model's weights here (built-in name or path), to build prompt_embeds",
        ),
    ] = None
    exact_label_ids: Annotated[bool, Field(description="vllm: exact label-word scores via logprob_token_ids")] = False


@dataclass(frozen=True)
class RemoteLimits:
    """The operator's limits on every remote endpoint a job calls (the service: `Settings.remote_max_response_mb`,
    `Settings.remote_max_concurrency`; the CLI: these defaults, on the user's own machine).

    Attributes:
        max_response_bytes: largest response body read; reading stops past it (`ResponseTooLarge`).
        max_concurrency: most requests a client has in flight, whatever `EndpointConfig.concurrency` asks.
    """

    max_response_bytes: int = 16 * 2**20
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        if self.max_response_bytes < 1 or self.max_concurrency < 1:
            raise ValueError(f"remote limits must be positive, got {self}")

    @classmethod
    def from_settings(cls, settings) -> RemoteLimits:
        """The limits `nograd.service.settings.Settings` sets (MB are MiB, as for the request limits)."""
        return cls(int(settings.remote_max_response_mb * 2**20), int(settings.remote_max_concurrency))

    def concurrency(self, config: EndpointConfig) -> int:
        """Requests in flight for `config`: what it asks, at most the cap."""
        return min(config.concurrency, self.max_concurrency)

    def check(self, config: EndpointConfig) -> None:
        """Refuse settings past the limits (at submit time); raises EndpointConfigError naming the field."""
        if config.concurrency > self.max_concurrency:
            raise EndpointConfigError(
                "concurrency",
                f"at most {self.max_concurrency} requests in flight on this service (got {config.concurrency}); "
                "the operator sets the cap with NOGRAD_REMOTE_MAX_CONCURRENCY",
            )
