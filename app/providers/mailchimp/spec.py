"""What the core knows about Mailchimp: connect kinds, limits, capabilities, statuses."""

from __future__ import annotations

from app.providers.base import (
    Capabilities,
    ConnectSpec,
    CredentialField,
    Limits,
    ProviderSpec,
    RemoteStatus,
)

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
