"""Tenant secrets (remote API keys): Fernet-encrypted at rest, decrypted only when a job builds its client.

Values are never logged, never returned by the API and never stored in a job's config (jobs name a secret).
The service's own keys (the Fernet key, the operator key) live in 0600 files in the data dir unless set.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class SecretError(LookupError):
    """A secret is missing or cannot be decrypted with this service's key."""


class SecretBox:
    def __init__(self, key: str | bytes):
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, settings) -> SecretBox:
        if settings.secrets_key:
            return cls(settings.secrets_key)
        return cls(key_file(Path(settings.data_dir) / "secrets.key", Fernet.generate_key))

    def seal(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise SecretError(
                "a stored secret cannot be decrypted with this service's key "
                "(NOGRAD_SECRETS_KEY changed?); store it again"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"


def key_file(path: Path, generate) -> bytes:
    """The key in `path`, created 0600 from `generate()` (bytes) when missing. Safe against concurrent first
    starts: the first writer wins and every process reads its key; an existing key is never overwritten."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new data dir is the owner's alone
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(generate())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes().strip()


def operator_key(settings) -> str:
    """The bearer key of operator routes (`/metrics`): `settings.operator_key`, else `data_dir/operator.key`,
    created on first start (the operator reads it there)."""
    if settings.operator_key:
        return settings.operator_key
    path = Path(settings.data_dir) / "operator.key"
    return key_file(path, lambda: f"ngop_{secrets.token_urlsafe(32)}".encode()).decode()


def tenant_secret(store, box: SecretBox, tenant: str, name: str) -> str:
    token = store.secret(tenant, name)
    if token is None:
        raise SecretError(f"secret {name!r} not found; store it with POST /v1/secrets")
    return box.open(token)
