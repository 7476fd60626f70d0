"""The signing key, access tokens and id tokens as RS256 JWTs (joserfc), and the JWKS."""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

_loaded: list[RSAKey] = []  # a key restored from a snapshot wins over a generated one


@lru_cache(maxsize=1)
def _generated() -> RSAKey:
    kid = "sandbox-" + secrets.token_hex(8)
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def signing_key() -> RSAKey:
    """One RSA key per process (generating one costs ~0.1 s); resets keep it."""
    return _loaded[-1] if _loaded else _generated()


def export_key() -> dict[str, Any]:
    """The private key as a JWK, for the state snapshot."""
    return dict(signing_key().as_dict(private=True))


def restore_key(jwk: dict[str, Any]) -> None:
    """Sign with a key from a snapshot, so tokens issued before a restart still verify."""
    _loaded[:] = [RSAKey.import_key(jwk)]


def jwks() -> dict[str, Any]:
    """The public key set served at `…/v1/keys`."""
    return dict(KeySet([signing_key()]).as_dict(private=False))


def sign(claims: dict[str, Any]) -> str:
    """A compact RS256 JWT with the header `{"kid", "alg"}` of reference §0.6."""
    key = signing_key()
    return jwt.encode({"kid": key.kid, "alg": "RS256"}, claims, key)


def decode(token: str) -> dict[str, Any]:
    """The claims of a token this sandbox signed (signature checked); ValueError otherwise."""
    try:
        return dict(jwt.decode(token, KeySet([signing_key()]), algorithms=["RS256"]).claims)
    except Exception as exc:  # joserfc raises its own hierarchy; any failure is "not ours"
        raise ValueError("not a token of this sandbox") from exc


def access_token_id() -> str:
    """An Okta-style `jti`: `AT.` and 43 url-safe characters."""
    return "AT." + secrets.token_urlsafe(32)


def refresh_token_value() -> str:
    """An opaque refresh token of 42 characters (DJCTCT stores ≤ 50)."""
    return secrets.token_urlsafe(32)[:42]
