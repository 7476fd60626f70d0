"""Mailchimp's audience events mapped onto the inbound rules (DESIGN §7's table)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import RowMapping

from app.config import Settings
from app.webhooks.inbound import (
    ARCHIVED,
    CLEANED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    InboundApplier,
    Outcome,
)
from app.webhooks.parsing import MailchimpEvent

EVENT_TYPES = frozenset({"subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign"})


def _merges(event: MailchimpEvent) -> dict[str, Any]:
    merges = event.data.get("merges")
    return merges if isinstance(merges, dict) else {}


async def handle_mailchimp(
    applier: InboundApplier, event: MailchimpEvent, *, connection: RowMapping, settings: Settings
) -> Outcome:
    """Apply one stored event; the outcome says what it did."""
    audience = connection["audience_id"]
    list_id = event.text("list_id")
    if audience is None or (list_id and list_id != audience):
        # A webhook left behind on another audience: its people are not this mirror's.
        return Outcome.ignored
    at, kind = event.fired_at, event.type
    match kind:
        case "unsubscribe":
            # action=delete: the member was removed (archived) in Mailchimp, not unsubscribed.
            status = ARCHIVED if event.text("action") == "delete" else UNSUBSCRIBED
            return await applier.status(
                email=event.text("email"),
                status=status,
                at=at,
                reason=event.text("reason"),
                event=kind,
            )
        case "cleaned":
            return await applier.status(
                email=event.text("email"),
                status=CLEANED,
                at=at,
                reason=event.text("reason") or "hard",
                event=kind,
            )
        case "subscribe":
            return await applier.status(
                email=event.text("email"),
                status=SUBSCRIBED,
                at=at,
                merges=_merges(event),
                event=kind,
            )
        case "profile":
            if not settings.INBOUND_PROFILE_UPDATES:
                return Outcome.ignored  # the CRM owns contact data (DESIGN §1.1)
            return await applier.profile(
                email=event.text("email"), merges=_merges(event), at=at, event=kind
            )
        case "upemail":
            return await applier.email_change(
                old_email=event.text("old_email"),
                new_email=event.text("new_email"),
                at=at,
                event=kind,
            )
    return Outcome.ignored  # campaign, and types Mailchimp may add later
