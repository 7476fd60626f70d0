"""The authorization server's routes: authorize (Allow/Deny), token, keys, device, revoke."""

from __future__ import annotations

import html
import json
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from app.sandbox import kit
from app.sandbox.constantcontact import auth, keys
from app.sandbox.constantcontact.auth import OAuthError
from app.sandbox.constantcontact.constants import ISSUER_PATH_ID
from app.sandbox.constantcontact.state import Account, App, DeviceCode, SandboxState

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def base_url(request: Request) -> str:
    """scheme://host + root_path: where this sandbox is reached (mounted or not)."""
    return kit.base_url(request.scope)


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:34rem;margin:4rem auto;color:#1b1b1b}"
        "button{font-size:1rem;padding:.5rem 1.5rem;margin-right:1rem}"
        "code{background:#f2f2f2;padding:0 .2rem}</style></head>"
        f"<body>{body}</body></html>",
        status_code=status,
    )


def _error_page(message: str) -> HTMLResponse:
    return _page(
        "Authorization error", f"<h1>Authorization error</h1><p>{html.escape(message)}</p>", 400
    )


def _redirect(uri: str, params: dict[str, str], *, fragment: bool = False) -> RedirectResponse:
    if fragment:
        return RedirectResponse(f"{uri}#{urlencode(params)}", status_code=302)
    joiner = "&" if urlsplit(uri).query else "?"
    return RedirectResponse(f"{uri}{joiner}{urlencode(params)}", status_code=302)


def _redirect_ok(app: App, uri: str) -> bool:
    """Registered URIs match exactly; an app with none registered takes any http(s) URI."""
    if app.redirect_uris:
        return uri in app.redirect_uris
    return urlsplit(uri).scheme in ("http", "https") and bool(urlsplit(uri).netloc)


async def authorize(request: Request) -> Response:
    """GET: login + consent page (or, with `auto=1`, approve at once); POST: the decision."""
    state = _state(request)
    params: dict[str, str] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    app = state.apps.get(params.get("client_id", ""))
    if app is None or not app.active:
        return _error_page("Invalid client_id: no active application has this API key.")
    redirect_uri = params.get("redirect_uri", "")
    if not _redirect_ok(app, redirect_uri):
        return _error_page(
            "The 'redirect_uri' parameter must be a Login redirect URI in the client app settings."
        )
    extra = {"state": params["state"]} if "state" in params else {}
    response_type = params.get("response_type", "")
    implicit = app.flow == "implicit"
    if response_type != ("token" if implicit else "code"):
        return _redirect(
            redirect_uri,
            {
                "error": "unsupported_response_type",
                "error_description": "The response type is not supported by the authorization "
                "server. Configured response types: [" + ("token" if implicit else "code") + "].",
                **extra,
            },
        )
    # Query parsing turns `+` and `%20` into spaces and `%2B` into a literal `+` (ref §0.3).
    scopes = [s for s in params.get("scope", "").split(" ") if s]
    bad = [s for s in scopes if s not in app.scopes]
    if not scopes or bad:
        return _redirect(
            redirect_uri,
            {
                "error": "invalid_scope",
                "error_description": "One or more scopes are not configured for the "
                "authorization server resource.",
                **extra,
            },
        )
    challenge = params.get("code_challenge") or None
    method = params.get("code_challenge_method") or None
    rule = app.pkce_rule(state.config)
    pkce_error = None
    if challenge is None and rule == "required":
        pkce_error = "PKCE code challenge is required by the client app."
    elif challenge is not None and rule == "forbidden":
        pkce_error = "PKCE is not allowed for this client app."
    elif challenge is not None and method != "S256":
        pkce_error = "The code_challenge_method is invalid; S256 is the only one supported."
    if pkce_error:
        return _redirect(
            redirect_uri, {"error": "invalid_request", "error_description": pkce_error, **extra}
        )
    account = state.accounts.get(params.get("account_id") or "") or next(
        iter(state.accounts.values())
    )
    decision = params.get("decision")
    if params.get("auto") in ("1", "true") and decision is None:
        decision = "allow"
    if decision == "deny":
        return _redirect(
            redirect_uri,
            {
                "error": "access_denied",
                "error_description": "The resource owner or authorization server denied the "
                "request.",
                **extra,
            },
            fragment=implicit,
        )
    if decision == "allow":
        if implicit:
            body = auth.grant_tokens(state, app, account, scopes, nonce=params.get("nonce"))
            body.pop("refresh_token", None)  # the implicit flow never gets one
            return _redirect(
                redirect_uri,
                {k: str(v) for k, v in body.items()} | extra,
                fragment=True,
            )
        code = auth.issue_code(
            state, app, account, redirect_uri, scopes, challenge, method, params.get("nonce")
        )
        return _redirect(redirect_uri, {"code": code, **extra})
    return _consent_page(request, state, app, account, params, scopes)


def _consent_page(
    request: Request,
    state: SandboxState,
    app: App,
    account: Account,
    params: dict[str, str],
    scopes: list[str],
) -> HTMLResponse:
    action = base_url(request) + "/oauth2/default/v1/authorize"
    carried = (
        "client_id",
        "redirect_uri",
        "state",
        "response_type",
        "scope",
        "code_challenge",
        "code_challenge_method",
        "nonce",
    )
    keep = {k: v for k, v in params.items() if k in carried}
    hidden = "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in keep.items()
    )
    options = "".join(
        f"<option value='{html.escape(a.id)}'{' selected' if a.id == account.id else ''}>"
        f"{html.escape(a.organization_name)} ({html.escape(a.login_email)})</option>"
        for a in state.accounts.values()
    )
    allow_link = f"{action}?{urlencode({**keep, 'account_id': account.id, 'decision': 'allow'})}"
    scope_items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in scopes)
    body = (
        "<h1>Constant Contact sandbox</h1>"
        f"<p><strong>{html.escape(app.name)}</strong> (API key <code>"
        f"{html.escape(app.client_id)}</code>) wants to access your Constant Contact account:</p>"
        f"<ul>{scope_items}</ul>"
        f"<form method='post' action='{html.escape(action)}'>{hidden}"
        f"<p><label>Log in as <select name='account_id'>{options}</select></label></p>"
        "<button type='submit' name='decision' value='allow' id='allow'>Allow</button>"
        "<button type='submit' name='decision' value='deny' id='deny'>Deny</button>"
        "</form>"
        f"<p><small><a id='allow-link' href='{html.escape(allow_link)}'>Allow (link)</a>"
        "</small></p>"
    )
    return _page("Authorize app - Constant Contact sandbox", body)


async def _token_params(request: Request) -> dict[str, str]:
    """Query string, then the body: form-encoded, or JSON whatever the Content-Type claims."""
    params = dict(request.query_params)
    raw = await request.body()
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        if isinstance(data, dict):
            params.update({k: str(v) for k, v in data.items() if v is not None})
    elif text:
        params.update(dict(parse_qsl(text, keep_blank_values=True)))
    return params


def _oauth_error(exc: OAuthError) -> Response:
    return JSONResponse(exc.body(), exc.status, headers=NO_STORE)


async def token(request: Request) -> Response:
    """Every token-request shape of reference §0.4."""
    state = _state(request)
    params = await _token_params(request)
    grant_type = params.get("grant_type", "")
    try:
        if not grant_type:
            raise OAuthError("invalid_request", "The 'grant_type' parameter is required.")
        if grant_type not in ("authorization_code", "refresh_token", DEVICE_GRANT):
            raise OAuthError(
                "unsupported_grant_type", f"The grant_type '{grant_type}' is not supported."
            )
        required = {
            "authorization_code": "code",
            "refresh_token": "refresh_token",
            DEVICE_GRANT: "device_code",
        }[grant_type]
        if not params.get(required):
            raise OAuthError("invalid_request", f"The '{required}' parameter is required.")
        app = auth.authenticate_client(state, params, request.headers.get("authorization"))
        if grant_type == "authorization_code":
            body = auth.exchange_code(state, app, params)
        elif grant_type == "refresh_token":
            body = auth.refresh(state, app, params)
        else:
            body = auth.device_token(state, app, params)
    except OAuthError as exc:
        return _oauth_error(exc)
    return JSONResponse(body, headers=NO_STORE)


async def jwks(request: Request) -> Response:
    return JSONResponse(keys.jwks())


async def device_authorize(request: Request) -> Response:
    """Device flow, step 1: a device code and a user code to type at the verification page."""
    state = _state(request)
    params = await _token_params(request)
    app = state.apps.get(params.get("client_id", ""))
    if app is None or not app.active:
        return _oauth_error(OAuthError("invalid_client", auth.CLIENT_INVALID, 401))
    scopes = [s for s in params.get("scope", "").split(" ") if s]
    if not scopes or any(s not in app.scopes for s in scopes):
        return _oauth_error(
            OAuthError(
                "invalid_scope",
                "One or more scopes are not configured for the authorization server resource.",
            )
        )
    device = DeviceCode(
        secrets.token_urlsafe(32),
        "-".join(secrets.token_hex(2).upper() for _ in range(2)),
        app.client_id,
        scopes,
        state.now(),
    )
    state.device_codes[device.device_code] = device
    verify = base_url(request) + "/oauth2/default/v1/device"
    return JSONResponse(
        {
            "device_code": device.device_code,
            "user_code": device.user_code,
            "verification_uri": verify,
            "verification_uri_complete": f"{verify}?{urlencode({'user_code': device.user_code})}",
            "expires_in": 600,
            "interval": 5,
        },
        headers=NO_STORE,
    )


async def device_verify(request: Request) -> Response:
    """Device flow, step 2: the user types the code and allows or denies (`auto=1` allows)."""
    state = _state(request)
    params: dict[str, str] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    user_code = params.get("user_code", "").strip().upper()
    device = next((d for d in state.device_codes.values() if d.user_code == user_code), None)
    decision = params.get("decision") or ("allow" if params.get("auto") in ("1", "true") else None)
    if device is not None and decision in ("allow", "deny"):
        if decision == "allow":
            account = state.accounts.get(params.get("account_id") or "") or next(
                iter(state.accounts.values())
            )
            device.account_id = account.id
        else:
            device.denied = True
        return _page("Device", f"<h1>Device {html.escape(decision)}ed</h1>")
    action = html.escape(base_url(request) + "/oauth2/default/v1/device")
    return _page(
        "Activate your device - Constant Contact sandbox",
        "<h1>Activate your device</h1>"
        f"<form method='post' action='{action}'>"
        f"<p><label>Code <input name='user_code' value='{html.escape(user_code)}'></label></p>"
        "<button type='submit' name='decision' value='allow' id='allow'>Allow</button>"
        "<button type='submit' name='decision' value='deny' id='deny'>Deny</button></form>",
    )


async def revoke(request: Request) -> Response:
    """RFC 7009 revocation: an access token by value, or a refresh token (its whole grant)."""
    state = _state(request)
    params = await _token_params(request)
    try:
        app = auth.authenticate_client(state, params, request.headers.get("authorization"))
    except OAuthError as exc:
        return _oauth_error(exc)
    value = params.get("token", "")
    access = state.access_tokens.get(value)
    if access is not None and access.client_id == app.client_id:
        access.revoked = True
    refresh = state.refresh_tokens.get(value)
    if refresh is not None and state.grants[refresh.grant_id].client_id == app.client_id:
        state.grants[refresh.grant_id].revoked = True
    return Response(status_code=200)


def _routes(prefix: str, *, full: bool) -> list[Route]:
    routes = [
        Route(f"{prefix}/v1/token", token, methods=["POST"]),
        Route(f"{prefix}/v1/keys", jwks, methods=["GET"]),
    ]
    if full:
        routes += [
            Route(f"{prefix}/v1/authorize", authorize, methods=["GET", "POST"]),
            Route(f"{prefix}/v1/device/authorize", device_authorize, methods=["POST"]),
            Route(f"{prefix}/v1/device", device_verify, methods=["GET", "POST"]),
            Route(f"{prefix}/v1/revoke", revoke, methods=["POST"]),
        ]
    return routes


routes: list[Any] = [
    *_routes("/oauth2/default", full=True),
    *_routes(f"/oauth2/{ISSUER_PATH_ID}", full=False),
]
