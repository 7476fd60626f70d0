"""Inbound webhook use cases: find the connection by its URL token, store the event once in the
inbox, apply it in the same transaction (the request's session commits; nothing here does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import structlog
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.config import Settings
from app.errors import AppError, NotFound
from app.webhooks.handlers import EVENT_TYPES, handle_mailchimp
from app.webhooks.inbound import Inbound, InboundApplier, Outcome, mapping_config
from app.webhooks.parsing import MailchimpEvent, MalformedPayload, parse_mailchimp
from app.webhooks.repository import InboundRepository, token_digest

log = structlog.get_logger(__name__)

MAILCHIMP = "mailchimp"
SOURCE_MAILCHIMP = "webhook:mailchimp"


class BadWebhook(AppError):
    """The body is too large or is not a delivery of this provider."""

    status_code = 400
    title = "Bad Request"
    slug = "webhook-payload"


class UnknownWebhook(NotFound):
    """No connection has this webhook address."""


@dataclass(slots=True, frozen=True)
class Received:
    """What became of one delivery."""

    event_id: int | None
    outcome: Outcome


def dedupe_key(provider: str, connection_id: str, event: MailchimpEvent) -> str:
    """Provider, connection and the whole delivery (type, fired_at, data): a redelivery is the
    same key; two different events in one second (two profile edits) are two."""
    canonical = orjson.dumps(event.payload, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(canonical).hexdigest()
    return f"{provider}:{connection_id}:{event.type}:{event.fired_at.isoformat()}:{digest}"


def refused(outcome: str) -> None:
    """Count a delivery we turned away."""
    metrics.WEBHOOK_EVENTS.labels(MAILCHIMP, "unknown", outcome).inc()


# How far ahead of our clock a delivery's `fired_at` may be (clock skew) before it counts as
# stamped on arrival: a time in the future would win every later ordering decision.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def _clamped(event: MailchimpEvent) -> MailchimpEvent:
    now = datetime.now(UTC)
    if event.fired_at > now + MAX_CLOCK_SKEW:
        log.warning("webhooks.fired_at_in_future", fired_at=event.fired_at.isoformat())
        return dataclasses.replace(event, fired_at=now)
    return event


class WebhookService:
    """Receive provider webhooks."""

    async def connection_for(
        self, session: AsyncSession, *, provider: str, token: str
    ) -> RowMapping:
        """The connection a webhook URL token belongs to, or 404.

        Looked up by the token's SHA-256 (an indexed expression), so lookup timing says
        nothing usable about stored tokens; the token itself is then compared in constant
        time.
        """
        rows = await InboundRepository(session).connections_by_token_hash(
            provider, token_digest(token)
        )
        given = token.encode("utf-8")
        for row in rows:
            if hmac.compare_digest(row["webhook_token"].encode("utf-8"), given):
                return row
        refused("not_found")
        raise UnknownWebhook("No webhook is registered at this address.")

    async def receive_mailchimp(
        self, session: AsyncSession, *, connection: RowMapping, body: bytes, settings: Settings
    ) -> Received:
        """Store a Mailchimp delivery once and apply it; a repeat does nothing."""
        try:
            event = parse_mailchimp(body)
        except MalformedPayload as exc:
            refused("bad_request")
            raise BadWebhook(f"Not a Mailchimp webhook delivery: {exc}") from None
        key = dedupe_key(MAILCHIMP, str(connection["id"]), event)  # as sent, for redeliveries
        event = _clamped(event)
        repo = InboundRepository(session)
        event_id = await repo.insert_event(
            {
                "provider": MAILCHIMP,
                "connection_id": connection["id"],
                "event_type": event.type[:64],
                "fired_at": event.fired_at,
                "payload": event.payload,
                "dedupe_key": key,
            }
        )
        label = event.type if event.type in EVENT_TYPES else "other"
        if event_id is None:
            metrics.WEBHOOK_EVENTS.labels(MAILCHIMP, label, Outcome.duplicate.value).inc()
            return Received(None, Outcome.duplicate)
        applier = InboundApplier(
            session,
            Inbound(
                connection_id=connection["id"],
                owner_id=connection["owner_id"],
                mapping=mapping_config(settings),
                source=SOURCE_MAILCHIMP,
                actor=f"webhook_event:{event_id}",
                signups=settings.INBOUND_SIGNUPS,
            ),
        )
        outcome = await handle_mailchimp(applier, event, connection=connection, settings=settings)
        await repo.finish_event(event_id, outcome.value)
        metrics.WEBHOOK_EVENTS.labels(MAILCHIMP, label, outcome.value).inc()
        log.info(
            "webhooks.event",
            provider=MAILCHIMP,
            connection=str(connection["id"]),
            event_id=event_id,
            type=label,
            outcome=outcome.value,
        )
        return Received(event_id, outcome)


webhook_service = WebhookService()
