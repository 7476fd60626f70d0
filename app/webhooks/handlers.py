"""Neutral inbound events mapped onto the inbound rules (DESIGN §7's table).

Each provider's package turns its deliveries into `InboundEvent`s; this applies them the same
way whichever provider (or the scheduled pull) they came from.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.engine import RowMapping

from app.config import Settings
from app.providers.base import InboundEvent, InboundKind
from app.webhooks.inbound import (
    ARCHIVED,
    CLEANED,
    COMPLAINED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    InboundApplier,
    Outcome,
)

_STATUS = {
    InboundKind.unsubscribe: UNSUBSCRIBED,
    InboundKind.archived: ARCHIVED,
    InboundKind.cleaned: CLEANED,
    InboundKind.complained: COMPLAINED,
}


async def handle(
    applier: InboundApplier,
    event: InboundEvent,
    *,
    connection: RowMapping,
    settings: Settings,
    audience_id: str | None = None,
) -> Outcome:
    """Apply one stored event; the outcome says what it did.

    `audience_id`: the audience of the mapping the applier writes the mirror of (default:
    the connection's own audience).
    """
    audience = audience_id or connection["audience_id"]
    if audience is None or (event.audience_id and event.audience_id != audience):
        # A webhook left behind on another audience: its people are not this mirror's.
        return Outcome.ignored
    at, kind = event.fired_at, event.type
    if event.kind is not InboundKind.profile and event.person_id and event.email:
        # By the provider's id where the address alone would miss the person (or name
        # another): see InboundApplier.attributed.
        email = await applier.attributed(event.email, event.person_id)
        if email is None:
            return Outcome.ignored
        event = dataclasses.replace(event, email=email)
    match event.kind:
        case (
            InboundKind.unsubscribe
            | InboundKind.archived
            | InboundKind.cleaned
            | (InboundKind.complained)
        ):
            return await applier.status(
                email=event.email,
                status=_STATUS[event.kind],
                at=at,
                reason=event.reason,
                event=kind,
            )
        case InboundKind.subscribe:
            return await applier.status(
                email=event.email, status=SUBSCRIBED, at=at, merges=event.fields, event=kind
            )
        case InboundKind.profile:
            if event.person_id and event.email:
                moved = await applier.moved_at_provider(
                    person_id=event.person_id, email=event.email, at=at, event=kind
                )
                if moved is not None:
                    return moved
                email = await applier.attributed(event.email, event.person_id)
                if email is None:
                    return Outcome.ignored
                event = dataclasses.replace(event, email=email)
            outcome = Outcome.ignored
            cfg = applier.inbound.mapping
            if cfg.interests and event.interest_changes is not None:
                # One preference joined or left (Mautic's segment change).
                outcome = await applier.preferences(
                    email=event.email,
                    chosen=None,
                    changes=event.interest_changes,
                    at=at,
                    event=kind,
                )
            elif cfg.interests and (event.interests is not None or event.interest_ids is not None):
                # The person's preferences are theirs to change (interest groups, both ways).
                chosen = (
                    cfg.chosen_by_labels(event.interests)
                    if event.interests is not None
                    else cfg.chosen_by_ids(dict.fromkeys(event.interest_ids or (), True))
                )
                outcome = await applier.preferences(
                    email=event.email, chosen=chosen, at=at, event=kind
                )
            if not settings.INBOUND_PROFILE_UPDATES:
                return outcome  # the CRM owns contact data (DESIGN §1.1)
            fields = await applier.profile(
                email=event.email, merges=event.fields, at=at, event=kind
            )
            return outcome if fields in (Outcome.unchanged, Outcome.ignored) else fields
        case InboundKind.email_change:
            return await applier.email_change(
                old_email=event.email, new_email=event.new_email, at=at, event=kind
            )
    return Outcome.ignored  # campaign, and types the provider may add later
