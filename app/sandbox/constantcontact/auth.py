"""The authorization server's rules: codes, PKCE, grants, rotation, token issue (ref §0)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Any

from app.sandbox.constantcontact import keys
from app.sandbox.constantcontact.state import (
    AccessToken,
    Account,
    App,
    AuthCode,
    Grant,
    RefreshToken,
    SandboxState,
    new_id,
)

VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
CODE_INVALID = "The authorization code is invalid or has expired."
REFRESH_INVALID = "The refresh token is invalid or expired."
CLIENT_INVALID = (
    "Client authentication failed. Either the client or the client credentials are invalid."
)


class OAuthError(Exception):
    """A token-endpoint error: `{"error", "error_description"}` and a status (ref §0.8)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def s256(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def basic_credentials(header: str | None) -> tuple[str, str | None] | None:
    """`Basic base64(id:secret)` → (id, secret); `Basic base64(id)` → (id, None) (PKCE)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    return user, (password if colon else None)


def authenticate_client(state: SandboxState, params: dict[str, str], header: str | None) -> App:
    """Basic `id:secret`, Basic `id` (public PKCE apps), or `client_id`/`client_secret` params."""
    basic = basic_credentials(header)
    client_id = basic[0] if basic else params.get("client_id", "")
    secret = basic[1] if basic and basic[1] else params.get("client_secret")
    app = state.apps.get(client_id)
    if app is None or not app.active:
        raise OAuthError("invalid_client", CLIENT_INVALID, 401)
    if app.client_secret is not None and not (
        secret is not None and hmac.compare_digest(secret.encode(), app.client_secret.encode())
    ):
        raise OAuthError("invalid_client", CLIENT_INVALID, 401)
    return app


def issue_code(
    state: SandboxState,
    app: App,
    account: Account,
    redirect_uri: str,
    scopes: list[str],
    challenge: str | None,
    method: str | None,
    nonce: str | None,
) -> str:
    code = secrets.token_urlsafe(32)
    state.codes[code] = AuthCode(
        code, app.client_id, account.id, redirect_uri, scopes, challenge, method, nonce, state.now()
    )
    return code


def _issue(
    state: SandboxState,
    app: App,
    account: Account,
    scopes: list[str],
    grant: Grant | None,
    *,
    nonce: str | None = None,
) -> tuple[AccessToken, str | None]:
    """A new access token (and, with `openid`, an id token)."""
    config = state.config
    now = state.now()
    ttl = config.access_token_ttl_seconds
    jti = keys.access_token_id()
    claims = {
        "ver": 1,
        "jti": jti,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": int(now),
        "exp": int(now + ttl),
        "cid": app.client_id,
        "uid": account.uid,
        "scp": list(scopes),
        "auth_time": int(now),
        "sub": account.login_email,
        "platform_user_id": account.platform_user_id,
    }
    token = AccessToken(
        jti,
        keys.sign(claims),
        app.client_id,
        account.id,
        list(scopes),
        now,
        now + ttl,
        grant.grant_id if grant else None,
    )
    state.access_tokens[token.token] = token
    state.tokens_by_jti[jti] = token
    id_token = None
    wants = {"openid_only": "openid" in scopes, "always": True, "never": False}[config.id_token]
    if wants:
        id_claims: dict[str, Any] = {
            "ver": 1,
            "sub": account.uid,
            "iss": config.issuer,
            "aud": app.client_id,
            "iat": int(now),
            "exp": int(now + 3600),
            "jti": "ID." + secrets.token_urlsafe(32),
            "auth_time": int(now),
            "email": account.login_email,
        }
        if nonce:
            id_claims["nonce"] = nonce
        id_token = keys.sign(id_claims)
    return token, id_token


def _new_refresh(state: SandboxState, grant: Grant) -> str:
    now = state.now()
    value = keys.refresh_token_value()
    state.refresh_tokens[value] = RefreshToken(value, grant.grant_id, now, now)
    for earlier in grant.chain:
        if earlier["superseded_at"] is None:
            earlier["superseded_at"] = now
            state.refresh_tokens[earlier["value"]].superseded_at = now
    grant.chain.append({"value": value, "issued_at": now, "superseded_at": None, "uses": 0})
    grant.current_refresh = value
    return value


def token_body(
    state: SandboxState,
    app: App,
    account: Account,
    scopes: list[str],
    grant: Grant | None,
    refresh: str | None,
    *,
    nonce: str | None = None,
) -> dict[str, Any]:
    """The §0.5 body: `refresh_token` only with `offline_access`, `id_token` only with openid."""
    access, id_token = _issue(state, app, account, scopes, grant, nonce=nonce)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": int(state.config.access_token_ttl_seconds),
        "access_token": access.token,
        "scope": " ".join(scopes),
    }
    if refresh is not None:
        body["refresh_token"] = refresh
    if id_token is not None:
        body["id_token"] = id_token
    return body


def new_grant(state: SandboxState, app: App, account: Account, scopes: list[str]) -> Grant:
    grant = Grant(new_id(), app.client_id, account.id, list(scopes), state.now())
    state.grants[grant.grant_id] = grant
    return grant


def grant_tokens(
    state: SandboxState, app: App, account: Account, scopes: list[str], *, nonce: str | None = None
) -> dict[str, Any]:
    """A fresh grant's first token response (code, device, control mint)."""
    grant = new_grant(state, app, account, scopes)
    refresh = None
    if "offline_access" in scopes and app.flow != "implicit":
        refresh = _new_refresh(state, grant)
    return token_body(state, app, account, scopes, grant, refresh, nonce=nonce)


def exchange_code(state: SandboxState, app: App, params: dict[str, str]) -> dict[str, Any]:
    """`grant_type=authorization_code`: single use, 5 minutes, bound to client, URI, PKCE."""
    code = state.codes.get(params.get("code", ""))
    now = state.now()
    if (
        code is None
        or code.used
        or code.client_id != app.client_id
        or now - code.created > state.config.auth_code_ttl_seconds
    ):
        raise OAuthError("invalid_grant", CODE_INVALID)
    if params.get("redirect_uri") != code.redirect_uri:
        raise OAuthError(
            "invalid_grant",
            "The 'redirect_uri' does not match the redirection URI used in the authorization "
            "request.",
        )
    if code.challenge is not None:
        verifier = params.get("code_verifier")
        if not verifier:
            raise OAuthError(
                "invalid_request",
                "PKCE code verifier is required when the parameter code_challenge was sent in "
                "the authorization request.",
            )
        if not VERIFIER_RE.match(verifier):
            raise OAuthError(
                "invalid_request",
                "The code_verifier is invalid: 43 to 128 characters of [A-Za-z0-9-._~].",
            )
        if not hmac.compare_digest(s256(verifier), code.challenge):
            raise OAuthError("invalid_grant", "PKCE verification failed.")
    elif app.client_secret is None:
        raise OAuthError("invalid_grant", "PKCE verification failed.")
    code.used = True
    account = state.accounts[code.account_id]
    return grant_tokens(state, app, account, code.scopes, nonce=code.nonce)


def refresh(state: SandboxState, app: App, params: dict[str, str]) -> dict[str, Any]:
    """`grant_type=refresh_token`: rotating (single use) or long-lived (the same value back)."""
    value = params.get("refresh_token", "")
    token = state.refresh_tokens.get(value)
    now = state.now()
    if token is None:
        raise OAuthError("invalid_grant", REFRESH_INVALID)
    grant = state.grants[token.grant_id]
    account = state.accounts.get(grant.account_id)
    if grant.revoked or grant.client_id != app.client_id or account is None:
        raise OAuthError("invalid_grant", REFRESH_INVALID)
    long_lived = app.refresh_token_type == "long_lived"
    started = token.last_used if long_lived else token.issued_at
    if now - started > state.config.refresh_token_ttl_days * 86_400:
        raise OAuthError("invalid_grant", REFRESH_INVALID)
    scopes = grant.scopes
    if params.get("scope"):
        asked = params["scope"].split()
        if not set(asked) <= set(grant.scopes):
            raise OAuthError(
                "invalid_scope", "The requested scope is invalid, unknown, or malformed."
            )
        scopes = asked
    for link in grant.chain:
        if link["value"] == value:
            link["uses"] += 1
    if token.superseded_at is not None:
        if now - token.superseded_at > state.config.refresh_reuse_grace_seconds:
            raise OAuthError("invalid_grant", REFRESH_INVALID)
        # inside the grace window: a new access token, the grant's current refresh token
        return token_body(state, app, account, scopes, grant, grant.current_refresh)
    token.last_used = now
    if state.config.revoke_access_on_refresh:
        for access in state.access_tokens.values():
            if access.grant_id == grant.grant_id:
                access.revoked = True
    new_value = value if long_lived else _new_refresh(state, grant)
    return token_body(state, app, account, scopes, grant, new_value)


def device_token(state: SandboxState, app: App, params: dict[str, str]) -> dict[str, Any]:
    """`urn:ietf:params:oauth:grant-type:device_code`: pending until the user approves."""
    device = state.device_codes.get(params.get("device_code", ""))
    if device is None or device.client_id != app.client_id:
        raise OAuthError("invalid_grant", "The device code is invalid or has expired.")
    if state.now() - device.created > 600:
        raise OAuthError("expired_token", "The device code has expired.")
    if device.denied:
        raise OAuthError(
            "access_denied", "The resource owner or authorization server denied the request."
        )
    if device.account_id is None:
        raise OAuthError(
            "authorization_pending", "The device authorization is pending. Please try again later."
        )
    del state.device_codes[device.device_code]
    return grant_tokens(state, app, state.accounts[device.account_id], device.scopes)


def mint(state: SandboxState, app: App, account: Account, scopes: list[str]) -> dict[str, Any]:
    """`POST /_control/tokens`: a grant without the browser (for SDK tests)."""
    return grant_tokens(state, app, account, scopes)


def bearer(state: SandboxState, header: str | None) -> AccessToken | None:
    """The live access token of an `Authorization: Bearer` header, or None."""
    if not header or header[:7].lower() != "bearer ":
        return None
    token = state.access_tokens.get(header[7:].strip())
    if token is None or token.revoked or state.now() >= token.expires_at:
        return None
    grant = state.grants.get(token.grant_id) if token.grant_id else None
    if grant is not None and grant.revoked:
        return None
    app = state.apps.get(token.client_id)
    if app is None or not app.active:
        return None
    return token
