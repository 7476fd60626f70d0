"""OAuth 2 connects (DESIGN §8): the signed single-use `state` and the errors of a failed
connect. Each provider's authorize URL and code exchange live in its package (`connect.py`).

The `state` is a short HS256 JWT (joserfc) under a key derived from AUTH_JWT_SECRET: it names
the owner, a random nonce and an expiry ten minutes out. The signature proves the service
issued it for that owner (joserfc compares MACs in constant time); the nonce's row in
`oauth_states` makes it usable once, whichever API replica the browser comes back to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey
from joserfc.jwt import JWTClaimsRegistry

from app.config import Settings
from app.errors import AppError

STATE_TTL_SECONDS = 600
STATE_AUDIENCE = "audience-sync:mailchimp-oauth"
STATE_ISSUER = "audience-sync"
_KEY_LABEL = b"audience-sync/oauth-state/v1"


class OAuthFailure(AppError):
    """The connect attempt cannot complete; `code` names why (shown to the user, no secrets)."""

    status_code = 400
    title = "The account was not connected"
    slug = "mailchimp-connect"  # the problem type URIs clients already match on

    def __init__(
        self, code: str, detail: str, *, status_code: int | None = None, provider: str | None = None
    ) -> None:
        super().__init__(detail, extra={"error": code})
        self.code = code
        if status_code is not None:
            self.status_code = status_code  # type: ignore[misc]
        if provider is not None:
            self.named(provider)

    def named(self, provider: str) -> OAuthFailure:
        """Title the failure with the provider's display name ("Constant Contact was not …")."""
        self.title = f"{provider} was not connected"  # type: ignore[misc]
        return self


class OAuthNotConfigured(AppError):
    """This deployment has no OAuth app for the provider (client id and secret), or no key."""

    status_code = 503
    title = "OAuth is not configured"
    slug = "oauth-not-configured"

    def __init__(self, detail: str, *, provider: str | None = None) -> None:
        super().__init__(detail)
        if provider is not None:
            self.title = f"{provider} OAuth is not configured"  # type: ignore[misc]


# --- state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateClaims:
    """What a verified `state` says."""

    owner_id: str
    nonce: str
    expires_at: int


def _state_key(settings: Settings) -> OctKey:
    # A key of its own, derived from the token secret: a `state` is never a valid bearer token.
    return OctKey.import_key(_derived(settings))


def _derived(settings: Settings) -> bytes:
    secret = settings.AUTH_JWT_SECRET.get_secret_value()
    if not secret and settings.ENCRYPTION_KEYS:
        secret = settings.ENCRYPTION_KEYS[0].get_secret_value()
    if not secret:
        raise OAuthNotConfigured("AUTH_JWT_SECRET (or ENCRYPTION_KEYS) is needed to sign `state`.")
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def pkce_verifier(settings: Settings, nonce: str) -> str:
    """The PKCE `code_verifier` of a connect attempt (RFC 7636: 43 characters of
    [A-Za-z0-9-_]), derived from its nonce under the state key: never stored, never sent
    anywhere but the provider's token endpoint."""
    mac = hmac.new(_derived(settings), b"pkce:" + nonce.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def new_nonce() -> str:
    """A random single-use nonce."""
    return secrets.token_urlsafe(24)


def sign_state(
    settings: Settings, *, owner_id: str, nonce: str, now: float | None = None
) -> tuple[str, int]:
    """The signed `state` for a connect attempt, and its expiry (epoch seconds)."""
    issued = int(now if now is not None else time.time())
    expires = issued + STATE_TTL_SECONDS
    claims = {
        "iss": STATE_ISSUER,
        "aud": STATE_AUDIENCE,
        "sub": owner_id,
        "nonce": nonce,
        "iat": issued,
        "exp": expires,
    }
    token = jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, _state_key(settings))
    return token, expires


def verify_state(settings: Settings, state: str | None) -> StateClaims:
    """The claims of a `state` this service signed and that has not expired, or OAuthFailure."""
    if not state:
        raise OAuthFailure(
            "state_missing", "The answer from Mailchimp carries no `state`; start again."
        )
    if len(state) > 2048:
        raise OAuthFailure("state_invalid", "This connection link is not valid; start again.")
    try:
        decoded = jwt.decode(state, _state_key(settings), algorithms=["HS256"])
        registry = JWTClaimsRegistry(
            leeway=0,
            exp={"essential": True},
            aud={"essential": True, "value": STATE_AUDIENCE},
            iss={"essential": True, "value": STATE_ISSUER},
            sub={"essential": True},
            nonce={"essential": True},
        )
        registry.validate(decoded.claims)
    except ExpiredTokenError:
        raise OAuthFailure(
            "state_expired", "This connection link has expired (after 10 minutes); start again."
        ) from None
    except (JoseError, ValueError, TypeError):
        raise OAuthFailure(
            "state_invalid", "This connection link is not valid; start again."
        ) from None
    claims = decoded.claims
    return StateClaims(
        owner_id=str(claims["sub"]), nonce=str(claims["nonce"]), expires_at=int(claims["exp"])
    )
