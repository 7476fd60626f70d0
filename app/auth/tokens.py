"""JWT issue and verification (joserfc, the Authlib project's JOSE library)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet, OctKey
from joserfc.jwt import JWTClaimsRegistry

from app.config import Settings
from app.errors import Unauthorized

JWKS_TTL_SECONDS = 600.0
JWKS_MIN_REFRESH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `owner_id` scopes every query; admins see every owner."""

    owner_id: str
    is_admin: bool = False


class TokenVerifier:
    """Verifies bearer tokens: HS256 with AUTH_JWT_SECRET, or RS256 from AUTH_JWKS_URL."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._jwks: KeySet | None = None
        self._jwks_fetched = 0.0
        self._jwks_lock = asyncio.Lock()
        secret = settings.AUTH_JWT_SECRET.get_secret_value()
        self._hs_key = OctKey.import_key(secret) if secret else None

    async def _keyset(self, *, refresh: bool = False) -> KeySet:
        url = self._settings.AUTH_JWKS_URL
        assert url is not None
        async with self._jwks_lock:  # concurrent requests share one fetch
            age = self._clock() - self._jwks_fetched
            # A forced refresh (unknown key) is rate-limited, so tokens signed with
            # made-up keys cannot turn every request into a fetch from the issuer.
            if (
                self._jwks is None
                or age > JWKS_TTL_SECONDS
                or (refresh and age > JWKS_MIN_REFRESH_SECONDS)
            ):
                async with httpx.AsyncClient(timeout=10.0) as client:
                    response = await client.get(url)
                    response.raise_for_status()
                self._jwks = KeySet.import_key_set(response.json())
                self._jwks_fetched = self._clock()
            return self._jwks

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names, or Unauthorized."""
        try:
            if self._settings.AUTH_JWKS_URL:
                try:
                    decoded = jwt.decode(token, await self._keyset(), algorithms=["RS256"])
                except (InvalidKeyIdError, BadSignatureError):
                    # The issuer may have rotated keys since we fetched them: one refetch.
                    decoded = jwt.decode(
                        token, await self._keyset(refresh=True), algorithms=["RS256"]
                    )
            elif self._hs_key is not None:
                decoded = jwt.decode(token, self._hs_key, algorithms=["HS256"])
            else:
                raise Unauthorized("Token verification is not configured.")
            claims = decoded.claims
            options: dict[str, Any] = {"exp": {"essential": True}, "sub": {"essential": True}}
            if self._settings.AUTH_ISSUER:
                options["iss"] = {"essential": True, "value": self._settings.AUTH_ISSUER}
            if self._settings.AUTH_AUDIENCE:
                options["aud"] = {"essential": True, "value": self._settings.AUTH_AUDIENCE}
            registry = JWTClaimsRegistry(leeway=30, **options)
            registry.validate(claims)
        # TypeError/KeyError: the JOSE library trips on some malformed input (a header that
        # is a JSON array, say); an undecodable token is the caller's problem, never a 500.
        except (JoseError, ValueError, TypeError, KeyError, httpx.HTTPError) as exc:
            raise Unauthorized(f"The bearer token is not valid: {_reason(exc)}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise Unauthorized("The bearer token has no subject.")
        return Principal(owner_id=sub, is_admin=claims.get("role") == "admin")


def _reason(exc: Exception) -> str:
    if isinstance(exc, JoseError):
        return exc.description or exc.error
    if isinstance(exc, httpx.HTTPError):
        return "the key set could not be fetched"
    return "it could not be decoded"


def issue_token(
    settings: Settings, owner_id: str, *, admin: bool = False, ttl_seconds: int = 30 * 86400
) -> str:
    """A signed HS256 token for development and tests (`audience-sync token`)."""
    secret = settings.AUTH_JWT_SECRET.get_secret_value()
    if not secret:
        raise RuntimeError("AUTH_JWT_SECRET is not set; tokens come from the identity provider.")
    now = int(time.time())
    claims: dict[str, object] = {"sub": owner_id, "iat": now, "exp": now + ttl_seconds}
    if admin:
        claims["role"] = "admin"
    if settings.AUTH_ISSUER:
        claims["iss"] = settings.AUTH_ISSUER
    if settings.AUTH_AUDIENCE:
        claims["aud"] = settings.AUTH_AUDIENCE
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(secret))
