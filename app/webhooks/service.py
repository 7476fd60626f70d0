"""Inbound webhook use cases: find the connection by its URL token, store the event once in the
inbox, apply it in the same transaction (the request's session commits; nothing here does).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.config import Settings
from app.connections.crypto import CredentialsError, decrypt_credentials
from app.errors import AppError, NotFound, Unauthorized
from app.providers import registry
from app.providers.base import BadSignature, InboundEvent, MalformedPayload
from app.providers.mapping import AudienceRule, interest_maps
from app.providers.registry import Provider
from app.webhooks.handlers import handle
from app.webhooks.inbound import Inbound, InboundApplier, Outcome
from app.webhooks.repository import InboundRepository, token_digest

log = structlog.get_logger(__name__)


class BadWebhook(AppError):
    """The body is too large or is not a delivery of this provider."""

    status_code = 400
    title = "Bad Request"
    slug = "webhook-payload"


class UnknownWebhook(NotFound):
    """No connection has this webhook address."""


@dataclass(slots=True, frozen=True)
class Received:
    """What became of one delivery (the last event's outcome when it carried several)."""

    event_id: int | None
    outcome: Outcome


def refused(outcome: str, provider: str = "unknown") -> None:
    """Count a delivery we turned away."""
    metrics.WEBHOOK_EVENTS.labels(provider, "unknown", outcome).inc()


def provider_for(provider_id: str) -> Provider:
    """The registered provider with webhooks, or 404 (nothing is registered there)."""
    provider = registry.find(provider_id)
    if provider is None or provider.spec.capabilities.inbound != "webhook":
        refused("not_found")
        raise UnknownWebhook("No webhook is registered at this address.")
    return provider


# How far ahead of our clock a delivery's `fired_at` may be (clock skew) before it counts as
# stamped on arrival: a time in the future would win every later ordering decision.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def _clamped(event: InboundEvent) -> InboundEvent:
    now = datetime.now(UTC)
    if event.fired_at > now + MAX_CLOCK_SKEW:
        log.warning("webhooks.fired_at_in_future", fired_at=event.fired_at.isoformat())
        return dataclasses.replace(event, fired_at=now)
    return event


def _signing_secret(settings: Settings, provider: Provider, connection: RowMapping) -> str | None:
    """The secret a signing provider's deliveries are checked against (kept encrypted in the
    connection's credentials as `webhook_secret`); None when it does not sign."""
    if not provider.spec.capabilities.webhook_signature:
        return None
    try:
        secret = decrypt_credentials(settings, connection["credentials"]).get("webhook_secret")
    except CredentialsError:
        return None  # unreadable: every delivery is refused (401) until a reconnect
    return str(secret) if secret else None


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
        refused("not_found", provider)
        raise UnknownWebhook("No webhook is registered at this address.")

    async def receive(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        connection: RowMapping,
        body: bytes,
        headers: Mapping[str, str],
        settings: Settings,
    ) -> Received:
        """Verify and parse a delivery, store each event once and apply it; a repeat does
        nothing."""
        name, pid = provider.spec.display_name, provider.id
        try:
            events = provider.inbound.parse(
                body, headers=headers, secret=_signing_secret(settings, provider, connection)
            )
        except BadSignature as exc:
            refused("bad_request", pid)
            raise Unauthorized(f"The {name} webhook signature does not verify: {exc}") from None
        except MalformedPayload as exc:
            refused("bad_request", pid)
            raise BadWebhook(f"Not a {name} webhook delivery: {exc}") from None
        repo = InboundRepository(session)
        received = Received(None, Outcome.duplicate)
        for sent in events:
            # The key is of the delivery as sent (redeliveries match); the time is clamped.
            key = provider.inbound.dedupe_key(str(connection["id"]), sent, body)
            event = _clamped(sent)
            event_id = await repo.insert_event(
                {
                    "provider": pid,
                    "connection_id": connection["id"],
                    "event_type": event.type[:64],
                    "fired_at": event.fired_at,
                    "payload": event.payload,
                    "dedupe_key": key,
                }
            )
            label = event.type if event.type in provider.inbound.event_types else "other"
            if event_id is None:
                metrics.WEBHOOK_EVENTS.labels(pid, label, Outcome.duplicate.value).inc()
                received = Received(None, Outcome.duplicate)
                continue
            # An event of another mapped audience updates that mapping's mirror.
            targets: list[RowMapping | None] = []
            if not event.audience_id and event.interest_changes:
                # A preference change naming no audience (Mautic's segment change): read with
                # every mapping whose preference map names that segment.
                targets += await repo.mappings_naming(connection["id"], event.interest_changes)
            if not targets:
                targets.append(await repo.mapping_for(connection["id"], event.audience_id))
            outcome = Outcome.ignored
            for mapping in targets:
                done = await self._apply(
                    session, provider, connection, event, event_id, mapping, settings
                )
                if outcome is Outcome.ignored or done is Outcome.applied:
                    outcome = done
            await repo.finish_event(event_id, outcome.value)
            metrics.WEBHOOK_EVENTS.labels(pid, label, outcome.value).inc()
            log.info(
                "webhooks.event",
                provider=pid,
                connection=str(connection["id"]),
                event_id=event_id,
                type=label,
                outcome=outcome.value,
            )
            received = Received(event_id, outcome)
        return received

    async def _apply(
        self,
        session: AsyncSession,
        provider: Provider,
        connection: RowMapping,
        event: InboundEvent,
        event_id: int,
        mapping: RowMapping | None,
        settings: Settings,
    ) -> Outcome:
        """Apply one stored event as `mapping`'s audience reads it (None: the connection's)."""
        pid = provider.id
        applier = InboundApplier(
            session,
            Inbound(
                mapping_id=mapping["id"] if mapping is not None else None,
                connection_id=connection["id"],
                owner_id=connection["owner_id"],
                # The mapping's rule and interest map, so the facts are read as the
                # worker plans that audience.
                mapping=dataclasses.replace(
                    provider.mapping(settings),
                    rule=AudienceRule.of(mapping),
                    interests=interest_maps(mapping["interests"]),
                )
                if mapping is not None
                else provider.mapping(settings),
                source=f"webhook:{pid}",
                actor=f"webhook_event:{event_id}",
                signups=settings.INBOUND_SIGNUPS,
                provider=pid,
                person_id=provider.person_id,
            ),
        )
        return await handle(
            applier,
            event,
            connection=connection,
            settings=settings,
            audience_id=mapping["audience_id"] if mapping is not None else None,
        )


webhook_service = WebhookService()
