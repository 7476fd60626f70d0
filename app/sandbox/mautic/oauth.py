"""`/oauth/v2/token` and `/oauth/v2/authorize` (FOSOAuthServerBundle + oauth2-php 1.3)."""

from __future__ import annotations

import base64
import binascii
import html
import secrets
from typing import Any
from urllib.parse import urlencode

from app.sandbox.mautic import errors
from app.sandbox.mautic.encoding import php_json
from app.sandbox.mautic.state import GRANT_CLIENT, GRANT_CODE, GRANT_REFRESH, AuthCode, MauticState

Answer = tuple[int, bytes, dict[str, str]]
TOKEN_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or authorization[:5].lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(authorization[5:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def token(state: MauticState, params: dict[str, Any], authorization: str | None) -> Answer:
    """oauth2-php `grantAccessToken`, its checks in its order; errors as Mautic rewrites them."""
    grant = params.get("grant_type")
    if grant not in (GRANT_CODE, GRANT_REFRESH, GRANT_CLIENT):
        raise errors.oauth("invalid_request", "Invalid grant_type parameter or parameter missing")
    creds = _basic_credentials(authorization)
    if creds is None:
        client_id = params.get("client_id")
        if not client_id:
            raise errors.oauth("invalid_client", "Client id was not found in the headers or body")
        creds = (str(client_id), str(params.get("client_secret") or ""))
    client_id, secret = creds
    client = state.clients.get(client_id)
    if grant == GRANT_CLIENT and not secret:
        raise errors.oauth(
            "invalid_client",
            'The client_secret is mandatory for the "client_credentials" grant type',
        )
    if client is None or not secrets.compare_digest(client.secret, secret):
        raise errors.oauth("invalid_client", "The client credentials are invalid")
    if grant not in client.grants:
        raise errors.oauth(
            "unauthorized_client", "The grant type is unauthorized for this client_id"
        )
    now = state.now()
    if grant == GRANT_CLIENT:
        body = state.issue(client, None, refresh=False)
    elif grant == GRANT_CODE:
        code = state.codes.get(str(params.get("code") or ""))
        if code is None or code.client_id != client.public_id:
            raise errors.oauth("invalid_grant", "Code doesn't exist or is invalid for the client")
        if code.redirect_uri and params.get("redirect_uri") != code.redirect_uri:
            raise errors.oauth(
                "redirect_uri_mismatch", "The redirect URI is missing or do not match"
            )
        if code.expires_at < now:
            raise errors.oauth("invalid_grant", "The authorization code has expired")
        del state.codes[code.code]
        body = state.issue(client, code.user, refresh=True)
    else:
        given = params.get("refresh_token")
        if not given:
            raise errors.oauth("invalid_request", 'No "refresh_token" parameter found')
        old = state.refresh_tokens.get(str(given))
        if old is None or old.client_id != client.public_id:
            raise errors.oauth("invalid_grant", "Invalid refresh token")
        if old.expires_at < now:
            raise errors.oauth("invalid_grant", "Refresh token has expired")
        body = state.issue(client, old.user, refresh=True)
        # Rotation: issuing a new refresh token expires the old one (single use).
        del state.refresh_tokens[old.token]
    return 200, php_json(body), dict(TOKEN_HEADERS)


def _redirect_ok(registered: list[str], wanted: str) -> bool:
    """oauth2-php `validateRedirectUri`: the given URI starts with a registered one."""
    return any(wanted.startswith(r) for r in registered)


def _login_page(params: dict[str, Any], message: str = "") -> bytes:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(str(v))}">'
        for k, v in params.items()
        if k in ("client_id", "redirect_uri", "response_type", "state", "grant_type")
    )
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return (
        "<!DOCTYPE html><html><head><title>Mautic sandbox: authorize</title></head><body>"
        "<h1>Mautic sandbox</h1><p>An application asks to access this Mautic.</p>"
        f'{note}<form method="post">{hidden}'
        '<label>Username <input name="username" value="admin"></label> '
        '<label>Password <input name="password" type="password"></label> '
        '<button type="submit">Accept</button></form></body></html>'
    ).encode()


def authorize(state: MauticState, method: str, params: dict[str, Any]) -> Answer:
    """A login-and-consent page; POST (or `auto=1`) redirects with `code` and `state`."""
    client = state.clients.get(str(params.get("client_id") or ""))
    if client is None:
        raise errors.oauth("invalid_client", "No client id supplied")
    redirect_uri = str(params.get("redirect_uri") or "")
    if not redirect_uri or not _redirect_ok(client.redirect_uris, redirect_uri):
        raise errors.oauth("redirect_uri_mismatch", "The redirect URI is missing or do not match")
    if params.get("response_type") != "code":
        raise errors.oauth("invalid_request", "Invalid response type.")
    user = None
    if str(params.get("auto", "")) == "1":
        user = state.admin
    elif method == "POST":
        for candidate in state.instance.users.values():
            if candidate.username == params.get("username") and secrets.compare_digest(
                candidate.password, str(params.get("password") or "")
            ):
                user = candidate
        if user is None:
            page = _login_page(params, "Invalid credentials.")
            return 200, page, {"Content-Type": "text/html; charset=UTF-8"}
    if user is None:
        return 200, _login_page(params), {"Content-Type": "text/html; charset=UTF-8"}
    code = AuthCode(
        secrets.token_urlsafe(32),
        client.public_id,
        user,
        redirect_uri,
        state.now() + state.config.auth_code_lifetime_seconds,
    )
    state.codes[code.code] = code
    query = {"code": code.code}
    if params.get("state") is not None:
        query["state"] = str(params["state"])
    sep = "&" if "?" in redirect_uri else "?"
    return 302, b"", {"Location": f"{redirect_uri}{sep}{urlencode(query)}"}
