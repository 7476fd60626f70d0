"""Mailchimp OAuth 2 (reference §6): the signed single-use `state`, the authorize URL, the
code exchange (Authlib) and the account metadata.

The `state` is a short HS256 JWT (joserfc) under a key derived from AUTH_JWT_SECRET: it names
the owner, a random nonce and an expiry ten minutes out. The signature proves the service
issued it for that owner (joserfc compares MACs in constant time); the nonce's row in
`oauth_states` makes it usable once, whichever API replica the browser comes back to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
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
    title = "Mailchimp was not connected"
    slug = "mailchimp-connect"

    def __init__(self, code: str, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail, extra={"error": code})
        self.code = code
        if status_code is not None:
            self.status_code = status_code  # type: ignore[misc]


class OAuthNotConfigured(AppError):
    """This deployment has no Mailchimp OAuth app (client id and secret)."""

    status_code = 503
    title = "Mailchimp OAuth is not configured"
    slug = "oauth-not-configured"


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """Where the OAuth endpoints are and who we are to them."""

    client_id: str
    client_secret: str
    redirect_uri: str
    base: str
    timeout: float

    @property
    def authorize_url(self) -> str:
        """The page the popup opens."""
        return f"{self.base}/oauth2/authorize"

    @property
    def token_url(self) -> str:
        """Code → token."""
        return f"{self.base}/oauth2/token"

    @property
    def metadata_url(self) -> str:
        """Token → data center, API endpoint, account."""
        return f"{self.base}/oauth2/metadata"


def oauth_config(settings: Settings) -> OAuthConfig:
    """The OAuth app of this deployment; in sandbox mode the sandbox's default app."""
    client_id = settings.MAILCHIMP_CLIENT_ID
    client_secret = settings.MAILCHIMP_CLIENT_SECRET.get_secret_value()
    if (not client_id or not client_secret) and settings.is_sandbox:
        from app.sandbox.mailchimp import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

        client_id, client_secret = DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
    if not client_id or not client_secret:
        raise OAuthNotConfigured(
            "Set MAILCHIMP_CLIENT_ID and MAILCHIMP_CLIENT_SECRET (a Mailchimp OAuth app) to"
            " connect accounts with OAuth, or connect with an API key."
        )
    redirect = settings.MAILCHIMP_REDIRECT_URI or (
        settings.PUBLIC_BASE_URL.rstrip("/") + "/api/integrations/mailchimp/callback"
    )
    return OAuthConfig(
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect,
        base=settings.oauth_base,
        timeout=settings.MAILCHIMP_TIMEOUT_SECONDS,
    )


# --- state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateClaims:
    """What a verified `state` says."""

    owner_id: str
    nonce: str
    expires_at: int


def _state_key(settings: Settings) -> OctKey:
    # A key of its own, derived from the token secret: a `state` is never a valid bearer token.
    secret = settings.AUTH_JWT_SECRET.get_secret_value()
    if not secret and settings.ENCRYPTION_KEYS:
        secret = settings.ENCRYPTION_KEYS[0].get_secret_value()
    if not secret:
        raise OAuthNotConfigured("AUTH_JWT_SECRET (or ENCRYPTION_KEYS) is needed to sign `state`.")
    derived = hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()
    return OctKey.import_key(derived)


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


# --- Authlib: authorize URL and code exchange -------------------------------------------


def _client(cfg: OAuthConfig) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        # Mailchimp reads the client credentials from the form body.
        token_endpoint_auth_method="client_secret_post",
        redirect_uri=cfg.redirect_uri,
        timeout=cfg.timeout,
    )


async def authorization_url(cfg: OAuthConfig, state: str) -> str:
    """Mailchimp's authorize page for this app, redirect URI and `state`."""
    async with _client(cfg) as client:
        url, _ = client.create_authorization_url(cfg.authorize_url, state=state)
    return str(url)


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """An access token and what Mailchimp's metadata says about its account."""

    access_token: str
    dc: str
    api_endpoint: str
    account_name: str | None
    account_ref: str  # the account behind the token (account id, else the login's user id)


async def exchange_code(cfg: OAuthConfig, code: str) -> OAuthGrant:
    """Code → access token (Authlib) → metadata (`dc`, `api_endpoint`, `accountname`)."""
    try:
        async with _client(cfg) as client:
            token = await client.fetch_token(
                cfg.token_url, grant_type="authorization_code", code=code
            )
            access_token = str(token.get("access_token") or "")
            if not access_token:
                raise OAuthFailure(
                    "exchange_failed", "Mailchimp did not issue an access token; start again."
                )
            # Mailchimp documents `Authorization: OAuth <token>` for the metadata endpoint.
            response = await client.request(
                "GET",
                cfg.metadata_url,
                headers={"Authorization": f"OAuth {access_token}", "Accept": "application/json"},
                withhold_token=True,
            )
    except OAuthError as exc:
        reason = exc.error or "oauth_error"
        raise OAuthFailure(
            "exchange_failed",
            f"Mailchimp refused the authorization code ({reason}); start again.",
            status_code=502 if reason not in ("invalid_grant",) else 400,
        ) from None
    except httpx2.HTTPStatusError as exc:
        raise OAuthFailure(
            "exchange_failed",
            f"Mailchimp's token endpoint answered {exc.response.status_code}; try again.",
            status_code=502,
        ) from None
    except httpx2.HTTPError as exc:
        raise OAuthFailure(
            "provider_unavailable",
            f"Mailchimp could not be reached ({type(exc).__name__}); try again in a minute.",
            status_code=503,
        ) from None
    if response.status_code != 200:
        raise OAuthFailure(
            "exchange_failed",
            f"Mailchimp's account metadata answered {response.status_code}; start again.",
            status_code=502,
        )
    try:
        meta: dict[str, Any] = response.json()
    except ValueError:
        meta = {}
    dc = str(meta.get("dc") or "")
    endpoint = str(meta.get("api_endpoint") or "")
    if not dc or not endpoint:
        raise OAuthFailure(
            "exchange_failed",
            "Mailchimp's account metadata names no data center; start again.",
            status_code=502,
        )
    login = meta.get("login") if isinstance(meta.get("login"), dict) else {}
    ref = meta.get("account_id") or meta.get("user_id") or (login or {}).get("login_id") or dc
    return OAuthGrant(
        access_token=access_token,
        dc=dc,
        api_endpoint=endpoint,
        account_name=str(meta["accountname"]) if meta.get("accountname") else None,
        account_ref=str(ref),
    )
