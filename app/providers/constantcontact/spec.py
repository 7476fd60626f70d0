"""What the core knows about Constant Contact: connect kinds, limits, capabilities, statuses."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from app.providers.base import (
    Capabilities,
    ConnectSpec,
    Limits,
    ProviderSpec,
    RemoteStatus,
)

if TYPE_CHECKING:
    from app.config import Settings

PROVIDER = "constantcontact"
DISPLAY_NAME = "Constant Contact"
# Reference §5: 4 requests a second and 10,000 a UTC day per API key (application), shared by
# every account connected through it.
RATE_PER_APPLICATION = 4
DAILY_QUOTA = 10_000
BULK_QUOTA_SHARE = 0.8
# `contacts_json_import` takes up to 40,000 contacts / 4 MB; the engine hands over at most
# SYNC_BATCH_SIZE people a call, each batch one import activity.
BATCH_SIZE = 500
SCOPES = ("account_read", "contact_data", "offline_access")

# permission_to_send → neutral status. A deleted contact, or one not on our list, is archived
# (off our audience, consent untouched); `temp_hold` is the bounce hold.
STATUS_MAP = {
    "explicit": RemoteStatus.subscribed,
    "implicit": RemoteStatus.subscribed,
    "pending_confirmation": RemoteStatus.pending,
    "unsubscribed": RemoteStatus.unsubscribed,
    "temp_hold": RemoteStatus.cleaned,
    "not_set": RemoteStatus.transactional,
    "deleted": RemoteStatus.archived,
    "off_list": RemoteStatus.archived,
}


def spec(bulk_quota_share: float = BULK_QUOTA_SHARE) -> ProviderSpec:
    """The spec with the deployment's bulk share of the daily quota."""
    return ProviderSpec(
        id=PROVIDER,
        display_name=DISPLAY_NAME,
        connect=ConnectSpec(kinds=("oauth",), pkce=True, scopes=SCOPES, token_expires=True),
        limits=Limits(
            rate_per_application=RATE_PER_APPLICATION,
            daily_quota_per_application=DAILY_QUOTA,
            bulk_quota_share=bulk_quota_share,
            # A status read only learns what an activity already did: not in a tenant's turn.
            background_ops=frozenset({"activity"}),
        ),
        capabilities=Capabilities(
            batch_size=BATCH_SIZE,
            bulk_import=True,
            reoptin="resubscribe_email",
            tag_model="ids",
            shared_tags=True,
            inbound="pull",
            joins_creates=True,
        ),
        status_map=STATUS_MAP,
        audience_noun="contact list",
    )


SPEC = spec()


def configured_limits(settings: Settings) -> Limits:
    """The limits with CONSTANTCONTACT_BULK_QUOTA_SHARE: bulk work's share of the day."""
    return replace(SPEC.limits, bulk_quota_share=settings.CONSTANTCONTACT_BULK_QUOTA_SHARE)
