"""nograd: gradient-free prompt tuning for language models you can only query.

Packages, lowest layer first (`pyproject.toml`'s import-linter contracts keep the imports pointing down):
`nograd.optimizers` and `nograd.clients` (the evaluation contract and model endpoints), `nograd.engine` (the torch
side), the core (`config`, `methods`, `search`, `discrete`, `pipeline`, `endpoints`, `artifacts`, `tasks`),
`nograd.service` (the REST service) and `nograd.sdk` (its HTTP client), and `nograd.cli`. Importing `nograd`
imports none of them: `nograd.Client` and `nograd.AsyncClient` (the SDK's clients) load `nograd.sdk` (httpx and
pydantic, no torch) on first use.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nograd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_SDK = ("Client", "AsyncClient", "ApiError")  # the SDK's names at the top level, imported when first read
__all__ = ["__version__", *_SDK]


def __getattr__(name: str):
    if name in _SDK:
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'nograd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SDK})
