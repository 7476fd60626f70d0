"""Constant Contact has no contact webhooks (reference §6): only the scheduled pull brings
people's unsubscribes, bounce holds, sign-ups and address changes back
(`ConstantContactClient.pull_changes`, applied by app/sync/pull.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.providers.base import InboundEvent, MalformedPayload, WebhookCall

EVENT_TYPES = frozenset({"unsubscribe", "bounce", "signup", "profile", "email_change"})


class ConstantContactInbound:
    """The InboundAdapter of a provider without webhooks."""

    event_types = EVENT_TYPES
    media_type = "application/json"

    def parse(
        self, body: bytes, *, headers: Mapping[str, str], secret: str | None
    ) -> list[InboundEvent]:
        """Nothing is ever delivered: Constant Contact sends no contact webhooks."""
        raise MalformedPayload("Constant Contact sends no contact webhooks")

    def dedupe_key(self, connection_id: str, event: InboundEvent, body: bytes) -> str:
        """A pulled change is one event per contact, kind and change time."""
        payload = event.payload
        return ":".join(
            (
                "constantcontact",
                connection_id,
                str(payload.get("contact_id") or event.email or ""),
                event.type,
                str(payload.get("updated_at") or event.fired_at.isoformat()),
            )
        )

    async def ensure_webhook(
        self, client: Any, audience_id: str, *, url: str, webhook_token: str, call: WebhookCall
    ) -> str | None:
        """No webhooks exist."""
        return None

    async def remove_webhooks(
        self,
        client: Any,
        audience_id: str,
        *,
        webhook_token: str,
        known_id: str | None,
        call: WebhookCall,
    ) -> int:
        """No webhooks exist."""
        return 0
