"""`audience-sync sandbox constantcontact`: serve the sandbox alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.sandbox.constantcontact import constants as c
from app.sandbox.constantcontact.config import SandboxConfig
from app.sandbox.kit import run


def build_config(changes: dict[str, Any]) -> SandboxConfig:
    """A configuration from the flags that were given (the rest keep their defaults)."""
    config = SandboxConfig()
    config.patch({k: v for k, v in changes.items() if v is not None})
    return config


def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 8027,
    *,
    changes: dict[str, Any] | None = None,
    state_file: Path | None = None,
) -> None:
    """Run the sandbox under uvicorn until interrupted."""
    from app.sandbox.constantcontact.app import create_app

    config = build_config(changes or {})
    app = create_app(config, state_file=state_file)
    url = f"http://{host}:{port}"
    banner = f"""
  Constant Contact sandbox on {url}
    API          {url}/v3   (Authorization: Bearer <access token>)
    Authorize    {url}/oauth2/default/v1/authorize   (Allow page; auto=1 approves at once)
    Token        {url}/oauth2/default/v1/token
    JWKS         {url}/oauth2/{c.ISSUER_PATH_ID}/v1/keys
    Apps         rotating    client_id={c.ROTATING_CLIENT_ID} secret={c.ROTATING_CLIENT_SECRET}
                 long-lived  client_id={c.LONG_LIVED_CLIENT_ID} secret={c.LONG_LIVED_CLIENT_SECRET}
                 PKCE        client_id={c.PKCE_CLIENT_ID} (public)
    Account      {c.DEFAULT_ACCOUNT_ID}, list {c.DEFAULT_LIST_ID}
    Control      {url}/_control   (reset, config, clock, tokens, contacts, actions, requests)
    Limits       {config.rate_per_second:g}/s and {config.daily_quota} a day per application

  Try it:
    TOKEN=$(curl -s -X POST {url}/_control/tokens \\
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    curl -s {url}/v3/account/summary -H "Authorization: Bearer $TOKEN"
"""
    run(app, host=host, port=port, banner=banner)
