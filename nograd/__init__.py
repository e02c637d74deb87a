"""nograd: gradient-free prompt tuning for language models you can only query.

Packages, lowest layer first (`pyproject.toml`'s import-linter contracts keep the imports pointing down):
`nograd.optimizers` and `nograd.clients` (the evaluation contract and model endpoints), `nograd.engine` (the torch
side), the core (`config`, `methods`, `search`, `discrete`, `pipeline`, `endpoints`, `artifacts`, `tasks`),
`nograd.service` (the REST service) and `nograd.sdk` (its HTTP client), and `nograd.cli`. Importing `nograd`
imports none of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nograd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
