"""`audience-sync sandbox mautic`: serve the Mautic sandbox alone."""

from __future__ import annotations

from typing import Any

from app.sandbox.mautic.config import MauticConfig
from app.sandbox.mautic.constants import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)


def build_config(
    *,
    basic_auth: bool = False,
    queue_mode: bool = False,
    token_lifetime: float | None = None,
    knobs: dict[str, Any] | None = None,
) -> MauticConfig:
    """A configuration from the flags that were given (the rest keep their defaults)."""
    config = MauticConfig()
    changes: dict[str, object] = {k: v for k, v in (knobs or {}).items() if v is not None}
    changes["api_enable_basic_auth"] = basic_auth
    if queue_mode:
        changes["queue_mode"] = "command_process"
    if token_lifetime is not None:
        changes["access_token_lifetime_seconds"] = token_lifetime
    config.patch(changes)
    return config


def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 8026,
    *,
    basic_auth: bool = False,
    queue_mode: bool = False,
    token_lifetime: float | None = None,
    knobs: dict[str, Any] | None = None,
    log_level: str = "warning",
) -> None:
    """Run the sandbox under uvicorn until interrupted."""
    from app.sandbox.kit import quiet_gc, run
    from app.sandbox.mautic.app import create_app

    config = build_config(
        basic_auth=basic_auth, queue_mode=queue_mode, token_lifetime=token_lifetime, knobs=knobs
    )
    app = create_app(config)
    url = f"http://{host}:{port}"
    basic = "on" if config.api_enable_basic_auth else "off"
    banner = f"""
  Mautic sandbox on {url}  (Mautic {config.mautic_version})
    API            {url}/api
    Token          {url}/oauth/v2/token   grant_type=client_credentials
    client_id      {DEFAULT_CLIENT_ID}
    client_secret  {DEFAULT_CLIENT_SECRET}
    Basic auth     {basic} ({ADMIN_USERNAME} / {ADMIN_PASSWORD})
    Webhooks       {config.queue_mode}
    Realism        latency {config.latency_ms:g} ms + {config.latency_per_item_ms:g} ms/item,
                   max {config.max_in_flight} in flight, seed {config.seed},
                   faults {config.fault_rates}
    Control        {url}/_control   (reset, config, clock, clients, actions, requests)

  Try it:
    curl -s -d grant_type=client_credentials -d client_id={DEFAULT_CLIENT_ID} \\
         -d client_secret={DEFAULT_CLIENT_SECRET} {url}/oauth/v2/token
"""
    quiet_gc()  # the process is the sandbox's alone
    run(app, host=host, port=port, banner=banner, log_level=log_level)
