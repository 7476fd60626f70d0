"""The OAuth callback's answers: a page that tells the opener and closes, a redirect to the
Settings page, or JSON for API callers."""

from __future__ import annotations

import html
import json
import secrets
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from app.config import Settings
from app.connections.schemas import OAuthOutcome

NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def wants_json(request: Request) -> bool:
    """True when the caller asked for JSON (an API client, not the popup)."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def app_origins(settings: Settings) -> list[str]:
    """The SPA's origins: the only windows the outcome is posted to (never "*").

    The service's own origin is one of them: its console at `/` opens the popup too."""
    origins = [o for o in (_origin(u) for u in settings.CORS_ORIGINS) if o]
    own_console = _origin(settings.public_base_url)
    if own_console and own_console not in origins:
        origins.append(own_console)
    if settings.APP_SETTINGS_URL:
        own = _origin(settings.APP_SETTINGS_URL)
        if own and own not in origins:
            origins.insert(0, own)
    return origins


def _script_json(value: object) -> str:
    # JSON inside <script>: nothing in it may close the element or start markup.
    text = json.dumps(value, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def callback_answer(
    request: Request,
    settings: Settings,
    outcome: OAuthOutcome,
    *,
    provider: str,
    name: str,
    status_code: int = 200,
) -> Response:
    """The callback's answer for a browser: redirect to the Settings page, or the popup page."""
    if settings.APP_SETTINGS_URL:
        params = (
            {provider: "connected", "status": outcome.status or ""}
            if outcome.ok
            else {provider: "error", "error": outcome.error or "failed"}
        )
        base = settings.APP_SETTINGS_URL
        joiner = "&" if urlsplit(base).query else "?"
        return RedirectResponse(
            f"{base}{joiner}{urlencode(params)}", status_code=303, headers=NO_STORE
        )
    return _popup_page(settings, outcome, name, status_code)


def json_answer(outcome: OAuthOutcome) -> Response:
    """The callback's answer for an API caller (success; failures are problem+json)."""
    return JSONResponse(outcome.model_dump(mode="json"), headers=NO_STORE)


def _popup_page(
    settings: Settings, outcome: OAuthOutcome, provider_name: str, status_code: int
) -> HTMLResponse:
    if outcome.ok:
        title = f"{provider_name} connected"
        if outcome.status == "needs_audience":
            message = f"{provider_name} is connected. Choose the audience to sync to in Settings."
        else:
            name = outcome.audience.name if outcome.audience else None
            message = f"Connected to {name}." if name else f"{provider_name} is connected."
    else:
        title = f"{provider_name} was not connected"
        message = outcome.detail or "Something went wrong; start again from Settings."
    nonce = secrets.token_urlsafe(16)
    payload = _script_json(outcome.model_dump(mode="json"))
    origins = _script_json(app_origins(settings))
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:30rem;margin:4rem auto;padding:0 1rem;
color:#222}}</style></head>
<body><h1>{html.escape(title)}</h1><p id="message">{html.escape(message)}</p>
<p><small>You can close this window.</small></p>
<script nonce="{nonce}">
(function () {{
  var outcome = {payload};
  var origins = {origins};
  if (window.opener && !window.opener.closed) {{
    // A same-origin opener (the console at /) can be named: post to it alone, not to every
    // allowed origin (each mismatch is a warning in the popup's console).
    try {{
      var own = window.opener.location.origin;
      if (origins.indexOf(own) >= 0) {{ origins = [own]; }}
    }} catch (e) {{}}
    for (var i = 0; i < origins.length; i++) {{
      try {{ window.opener.postMessage(outcome, origins[i]); }} catch (e) {{}}
    }}
    window.close();
  }}
}})();
</script></body></html>
"""
    headers = {
        **NO_STORE,
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline';"
            " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(body, status_code=status_code, headers=headers)
