"""`audience-sync sandbox activecampaign`: serve the sandbox alone."""

from __future__ import annotations

from app.sandbox.activecampaign.config import AcConfig
from app.sandbox.activecampaign.constants import DEFAULT_API_KEY, DEFAULT_LIST_ID


def build_config(
    *,
    latency_ms: float | None = None,
    rate_limit_per_second: int | None = None,
    seed: int | None = None,
    fault_rates: dict[str, float] | None = None,
) -> AcConfig:
    """A configuration from the flags that were given (the rest keep their defaults)."""
    config = AcConfig()
    changes: dict[str, object] = {
        "latency_ms": latency_ms,
        "rate_limit_per_second": rate_limit_per_second,
        "seed": seed,
        "fault_rates": {k: v for k, v in (fault_rates or {}).items() if v} or None,
    }
    config.patch({k: v for k, v in changes.items() if v is not None})
    return config


def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 8028,
    *,
    latency_ms: float | None = None,
    rate_limit_per_second: int | None = None,
    seed: int | None = None,
    fault_rates: dict[str, float] | None = None,
    log_level: str = "warning",
) -> None:
    """Run the sandbox under uvicorn until interrupted."""
    from app.sandbox.activecampaign.app import create_app
    from app.sandbox.kit import run

    config = build_config(
        latency_ms=latency_ms,
        rate_limit_per_second=rate_limit_per_second,
        seed=seed,
        fault_rates=fault_rates,
    )
    url = f"http://{host}:{port}"
    banner = f"""
  ActiveCampaign sandbox on {url}
    API URL      {url}          (the account URL; the API is {url}/api/3)
    API token    {DEFAULT_API_KEY}   (header Api-Token)
    List id      {DEFAULT_LIST_ID}
    Control      {url}/_control   (reset, config, clock, accounts, contacts, actions, requests)
    Limits       {config.rate_limit_per_second} requests/s per account,
                 latency {config.latency_ms:g} ms, seed {config.seed}, faults {config.fault_rates}

  Try it:
    curl -s -H 'Api-Token: {DEFAULT_API_KEY}' {url}/api/3/users/me
"""
    run(create_app(config), host=host, port=port, banner=banner, log_level=log_level)
