"""What the core knows about Mailchimp: connect kinds, limits, capabilities, statuses."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from app.providers.base import (
    Capabilities,
    ConnectSpec,
    CredentialField,
    Limits,
    ProviderSpec,
    RemoteStatus,
)

if TYPE_CHECKING:
    from app.config import Settings

PROVIDER = "mailchimp"
MAX_CONCURRENCY = 10  # Mailchimp's documented cap of simultaneous connections per account
BATCH_SIZE = 500

SPEC = ProviderSpec(
    id=PROVIDER,
    display_name="Mailchimp",
    connect=ConnectSpec(
        kinds=("oauth", "credentials"),
        credentials=(
            CredentialField(
                "api_key",
                "API key",
                kind="secret",
                help="Account → Extras → API keys; looks like <32 hex characters>-us1.",
            ),
        ),
    ),
    limits=Limits(concurrency_per_account=MAX_CONCURRENCY),
    capabilities=Capabilities(
        batch_size=BATCH_SIZE,
        reoptin="double_opt_in",
        tag_model="names",
        inbound="webhook",
    ),
    # Mailchimp's statuses are the neutral vocabulary's origin: they map onto themselves.
    status_map={
        "subscribed": RemoteStatus.subscribed,
        "pending": RemoteStatus.pending,
        "unsubscribed": RemoteStatus.unsubscribed,
        "cleaned": RemoteStatus.cleaned,
        "archived": RemoteStatus.archived,
        "transactional": RemoteStatus.transactional,
    },
    audience_noun="audience",
)


def configured_limits(settings: Settings) -> Limits:
    """Mailchimp's limits with MAILCHIMP_MAX_CONCURRENCY: it may only lower the cap of 10."""
    cap = min(MAX_CONCURRENCY, settings.MAILCHIMP_MAX_CONCURRENCY)
    return replace(SPEC.limits, concurrency_per_account=cap)
