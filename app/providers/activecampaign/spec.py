"""What the core knows about ActiveCampaign: connect kind, limits, capabilities, statuses."""

from __future__ import annotations

from app.providers.base import (
    Capabilities,
    ConnectSpec,
    CredentialField,
    EndpointRate,
    Limits,
    ProviderSpec,
    RemoteStatus,
)

PROVIDER = "activecampaign"
RATE_PER_SECOND = 5  # "5 requests per second per account" (reference §7), every key together
BULK_MAX_CONTACTS = 250  # import/bulk_import: contacts a request (reference §5.1)
BULK_MAX_BYTES = 400_000  # and its payload cap
BULK_MIN_CONTACTS = 10  # "If less than that, then contact/sync api request should be used"
# The client's labels of the bulk-import requests; the limits layer applies their own rates.
OP_BULK_MULTI = "bulk_import"
OP_BULK_SINGLE = "bulk_import_single"

# Contact <-> list status codes (reference §3.3) as the client names them.
UNCONFIRMED, ACTIVE, UNSUBSCRIBED, BOUNCED = 0, 1, 2, 3
STATUS_WORDS = {UNCONFIRMED: "unconfirmed", ACTIVE: "active", UNSUBSCRIBED: "unsubscribed"}
STATUS_WORDS[BOUNCED] = "bounced"

STATUS_MAP = {
    "active": RemoteStatus.subscribed,
    "unconfirmed": RemoteStatus.pending,
    "unsubscribed": RemoteStatus.unsubscribed,
    "bounced": RemoteStatus.cleaned,
    "absent": RemoteStatus.absent,
}

SPEC = ProviderSpec(
    id=PROVIDER,
    display_name="ActiveCampaign",
    connect=ConnectSpec(
        kinds=("credentials",),
        credentials=(
            CredentialField(
                "api_url",
                "API URL",
                kind="url",
                help="Settings → Developer: https://<account>.api-us1.com",
            ),
            CredentialField("api_key", "API key", kind="secret", help="Settings → Developer."),
        ),
    ),
    limits=Limits(
        rate_per_account=RATE_PER_SECOND,
        endpoint_rates=(
            EndpointRate(OP_BULK_MULTI, 100, 60.0),
            EndpointRate(OP_BULK_SINGLE, 20, 60.0),
        ),
    ),
    capabilities=Capabilities(
        batch_size=BULK_MAX_CONTACTS,
        bulk_import=True,
        reoptin="none",
        tag_model="ids",
        shared_tags=True,
        inbound="webhook",
    ),
    status_map=STATUS_MAP,
    audience_noun="list",
)
