"""`/oauth2/authorize`, `/oauth2/token`, `/oauth2/metadata` (reference §6)."""

from __future__ import annotations

import base64
import binascii
import html
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.sandbox.mailchimp.api import base_url
from app.sandbox.mailchimp.state import Account, SandboxState


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def _redirect(redirect_uri: str, params: dict[str, str]) -> RedirectResponse:
    joiner = "&" if urlsplit(redirect_uri).query else "?"
    return RedirectResponse(f"{redirect_uri}{joiner}{urlencode(params)}", status_code=302)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:32rem;margin:4rem auto;color:#241c15}"
        "button{font-size:1rem;padding:.5rem 1.5rem;margin-right:1rem}</style></head>"
        f"<body>{body}</body></html>",
        status_code=status,
    )


def _error_page(message: str) -> HTMLResponse:
    return _page(
        "Authorization error", f"<h1>Authorization error</h1><p>{html.escape(message)}</p>", 400
    )


async def authorize(request: Request) -> Response:
    """GET shows Allow/Deny (or, with `auto=1`, redirects at once); POST is the decision."""
    state = _state(request)
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    client = state.clients.get(params.get("client_id", ""))
    if client is None:
        return _error_page("Invalid client_id: no registered app has this client id.")
    redirect_uri = params.get("redirect_uri", "")
    if urlsplit(redirect_uri).scheme not in ("http", "https"):
        return _error_page("Invalid redirect_uri.")
    if params.get("response_type", "code") != "code":
        return _error_page("Only response_type=code is supported.")
    account = state.accounts.get(params.get("account_id") or client.id)
    if account is None:
        return _error_page("Unknown account_id.")
    extra = {"state": params["state"]} if "state" in params else {}
    decision = params.get("decision")
    if params.get("auto") in ("1", "true") and decision is None:
        decision = "allow"
    if decision == "allow":
        code = state.issue_code(client, account, redirect_uri)
        return _redirect(redirect_uri, {"code": code, **extra})
    if decision == "deny":
        return _redirect(redirect_uri, {"error": "access_denied", **extra})
    return _consent_page(request, state, client, account, params)


def _consent_page(
    request: Request, state: SandboxState, client: Account, account: Account, params: dict[str, Any]
) -> HTMLResponse:
    action = base_url(request.scope) + "/oauth2/authorize"
    keep = {
        k: v
        for k, v in params.items()
        if k in ("client_id", "redirect_uri", "state", "response_type")
    }
    hidden = "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(str(v))}'>"
        for k, v in keep.items()
    )
    options = "".join(
        f"<option value='{html.escape(a.id)}'{' selected' if a.id == account.id else ''}>"
        f"{html.escape(a.name)} ({html.escape(a.login_email)})</option>"
        for a in state.accounts.values()
    )
    allow_link = f"{action}?{urlencode({**keep, 'account_id': account.id, 'decision': 'allow'})}"
    body = (
        "<h1>Mailchimp sandbox</h1>"
        f"<p>An app (client <code>{html.escape(client.client_id)}</code>) wants to access "
        "your Mailchimp account.</p>"
        f"<form method='post' action='{html.escape(action)}'>{hidden}"
        f"<p><label>Log in as <select name='account_id'>{options}</select></label></p>"
        "<button type='submit' name='decision' value='allow' id='allow'>Allow</button>"
        "<button type='submit' name='decision' value='deny' id='deny'>Deny</button>"
        "</form>"
        f"<p><small><a id='allow-link' href='{html.escape(allow_link)}'>Allow (link)</a>"
        "</small></p>"
    )
    return _page("Authorize app - Mailchimp sandbox", body)


async def token(request: Request) -> Response:
    """Authorization code -> access token (form-encoded, client credentials in form or Basic)."""
    state = _state(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    client_id = fields.get("client_id", "")
    client_secret = fields.get("client_secret", "")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            client_id, client_secret = client_id or user, client_secret or password
        except (binascii.Error, UnicodeDecodeError):
            pass
    if fields.get("grant_type") != "authorization_code":
        return _json({"error": "unsupported_grant_type"}, 400)
    client = state.clients.get(client_id)
    if client is None or client.client_secret != client_secret:
        return _json({"error": "invalid_client"}, 401)
    access = state.exchange_code(
        fields.get("code", ""), client_id, client_secret, fields.get("redirect_uri")
    )
    if access is None:
        return _json({"error": "invalid_grant"}, 400)
    return _json({"access_token": access, "expires_in": 0, "scope": None})


async def metadata(request: Request) -> Response:
    """Who the token belongs to, and where its API is (this sandbox)."""
    state = _state(request)
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    account = None
    if scheme.lower() in ("oauth", "bearer") and credential.strip():
        account = state.account_for_token(credential.strip())
    if account is None:
        return _json({"error": "invalid_token", "error_description": "Invalid token"}, 401)
    base = base_url(request.scope)
    return _json(
        {
            "dc": account.dc,
            "role": "owner",
            "accountname": account.name,
            "account_id": account.id,
            "user_id": account.user_id,
            "login": {
                "email": account.login_email,
                "avatar": None,
                "login_id": account.user_id,
                "login_name": account.login_name,
                "login_email": account.login_email,
            },
            "login_url": base,
            "api_endpoint": base,
        }
    )


routes = [
    Route("/oauth2/authorize", authorize, methods=["GET", "POST"]),
    Route("/oauth2/token", token, methods=["POST"]),
    Route("/oauth2/metadata", metadata, methods=["GET"]),
]
