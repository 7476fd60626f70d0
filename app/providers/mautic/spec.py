"""What the core knows about Mautic: connect kind, limits, capabilities, statuses."""

from __future__ import annotations

from app.providers.base import (
    Capabilities,
    ConnectSpec,
    CredentialField,
    Limits,
    ProviderSpec,
    RemoteStatus,
)

PROVIDER = "mautic"
# MAUTIC_MAX_CONCURRENCY's default: a self-hosted PHP instance serves few requests at once
# (one PHP-FPM pool), and every API call is a full Symfony boot.
MAX_CONCURRENCY = 4
BATCH_SIZE = 200  # api_batch_max_limit: one more is an HTTP 500 for the whole batch
# The do-not-contact comment that marks a DNC as ours: only such a DNC is ever lifted by us.
OUR_DNC_COMMENT = "audience-sync: opted out in the CRM"

# Mautic has no member status: the email channel's DNC reason is the consent (reference §2).
# 0 contactable, 1 the person unsubscribed (links, feedback loops), 2 bounced, 3 manual.
STATUS_MAP = {
    "contactable": RemoteStatus.subscribed,
    "unsubscribed": RemoteStatus.unsubscribed,
    "bounced": RemoteStatus.cleaned,
    "manual": RemoteStatus.unsubscribed,
    "absent": RemoteStatus.absent,
}

SPEC = ProviderSpec(
    id=PROVIDER,
    display_name="Mautic",
    connect=ConnectSpec(
        kinds=("credentials",),
        credentials=(
            CredentialField(
                "base_url", "Mautic URL", kind="url", help="https://mautic.example.com"
            ),
            CredentialField(
                "client_id",
                "Client ID",
                help="Settings → API Credentials → OAuth 2, created by an administrator.",
            ),
            CredentialField("client_secret", "Client secret", kind="secret"),
        ),
        token_expires=True,
    ),
    # A batch's segment add goes ahead of new batches: its rows wait for it.
    limits=Limits(concurrency_per_account=MAX_CONCURRENCY, first_ops=frozenset({"segment_add"})),
    capabilities=Capabilities(
        batch_size=BATCH_SIZE,
        reoptin="none",
        tag_model="names",
        shared_tags=True,
        inbound="webhook",
        webhook_signature=True,
    ),
    status_map=STATUS_MAP,
    audience_noun="segment",
)
