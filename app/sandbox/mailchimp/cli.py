"""`audience-sync sandbox mailchimp`: serve the sandbox alone."""

from __future__ import annotations

from pathlib import Path

from app.sandbox.mailchimp.config import SandboxConfig
from app.sandbox.mailchimp.constants import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_LIST_ID,
)


def build_config(
    *,
    latency_ms: float | None = None,
    latency_per_member_ms: float | None = None,
    max_in_flight: int | None = None,
    seed: int | None = None,
    fault_rates: dict[str, float] | None = None,
    timeout_seconds: float | None = None,
) -> SandboxConfig:
    """A configuration from the flags that were given (the rest keep their defaults)."""
    config = SandboxConfig()
    changes: dict[str, object] = {
        "latency_ms": latency_ms,
        "latency_per_member_ms": latency_per_member_ms,
        "max_in_flight": max_in_flight,
        "seed": seed,
        "fault_rates": {k: v for k, v in (fault_rates or {}).items() if v} or None,
        "timeout_seconds": timeout_seconds,
    }
    config.patch({k: v for k, v in changes.items() if v is not None})
    return config


def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 8025,
    latency_ms: float | None = None,
    latency_per_member_ms: float | None = None,
    max_in_flight: int | None = None,
    seed: int | None = None,
    *,
    fault_rates: dict[str, float] | None = None,
    timeout_seconds: float | None = None,
    state_file: Path | None = None,
    log_level: str = "warning",
) -> None:
    """Run the sandbox under uvicorn until interrupted."""
    import gc

    from app.sandbox.kit import run
    from app.sandbox.mailchimp.app import create_app

    # A long-lived heap of members and bursts of short-lived JSON: collect young objects
    # less often (a batch of 500 members otherwise triggers dozens of collections).
    gc.set_threshold(100_000, 50, 100)

    config = build_config(
        latency_ms=latency_ms,
        latency_per_member_ms=latency_per_member_ms,
        max_in_flight=max_in_flight,
        seed=seed,
        fault_rates=fault_rates,
        timeout_seconds=timeout_seconds,
    )
    app = create_app(config, state_file=state_file)
    url = f"http://{host}:{port}"
    banner = f"""
  Mailchimp sandbox on {url}
    API          {url}/3.0   (HTTP Basic, any user name, password = API key)
    API key      {DEFAULT_API_KEY}
    Audience id  {DEFAULT_LIST_ID}
    OAuth        {url}/oauth2/authorize  client_id={DEFAULT_CLIENT_ID}
                 client_secret={DEFAULT_CLIENT_SECRET}
    Control      {url}/_control   (reset, config, accounts, members, actions, requests)
    Config       latency {config.latency_ms:g} ms + {config.latency_per_member_ms:g} ms/member,
                 max {config.max_in_flight} in flight, seed {config.seed},
                 faults {config.fault_rates}

  Try it:
    curl -s -u any:{DEFAULT_API_KEY} {url}/3.0/ping
"""
    run(app, host=host, port=port, banner=banner, log_level=log_level)
