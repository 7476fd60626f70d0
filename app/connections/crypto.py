"""Credentials at rest: MultiFernet over ENCRYPTION_KEYS (newest first, older ones decrypt)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.config import Settings


class CredentialsError(Exception):
    """Stored credentials cannot be decrypted with any configured key."""


@lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def _keys(settings: Settings) -> tuple[str, ...]:
    keys = tuple(k.get_secret_value() for k in settings.ENCRYPTION_KEYS)
    if not keys:
        raise CredentialsError("ENCRYPTION_KEYS is empty: credentials cannot be stored.")
    return keys


def encrypt_credentials(settings: Settings, values: dict[str, Any]) -> str:
    """Ciphertext of a credentials dict, under the newest key."""
    return _fernet(_keys(settings)).encrypt(json.dumps(values).encode()).decode()


def decrypt_credentials(settings: Settings, token: str) -> dict[str, Any]:
    """The credentials dict; CredentialsError when no key opens it."""
    try:
        return dict(json.loads(_fernet(_keys(settings)).decrypt(token.encode())))
    except (InvalidToken, ValueError) as exc:
        raise CredentialsError(
            "Stored credentials cannot be decrypted with ENCRYPTION_KEYS."
        ) from exc


def rotate_credentials(settings: Settings, token: str) -> str:
    """Re-encrypt under the newest key (after a key was added in front of ENCRYPTION_KEYS)."""
    return _fernet(_keys(settings)).rotate(token.encode()).decode()
