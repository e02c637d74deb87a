"""Tenant secrets (remote API keys): Fernet-encrypted at rest, decrypted only when a job builds its client.

Values are never logged, never returned by the API and never stored in a job's config (jobs name a secret).
"""

from __future__ import annotations

import os
import re
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
        path = Path(settings.data_dir) / "secrets.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".secrets.key.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
            try:
                os.link(tmp, path)  # first writer wins; never overwrite a key secrets were encrypted with
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(path.read_bytes().strip())

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


def tenant_secret(store, box: SecretBox, tenant: str, name: str) -> str:
    token = store.secret(tenant, name)
    if token is None:
        raise SecretError(f"secret {name!r} not found; store it with POST /v1/secrets")
    return box.open(token)
