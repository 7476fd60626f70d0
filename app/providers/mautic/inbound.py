"""Mautic webhook deliveries: the signature over the raw body and the neutral events they mean.

Only verification and parsing exist yet; registering our hook (`/api/hooks`) and the
`InboundAdapter` the registry needs are still to write (issue 14 item 5).

A delivery is `{trigger: [item, …], …}` (several types in one POST in queue mode; the "Send
test payload" button adds a top-level `timestamp`), signed `Webhook-Signature` = base64
HMAC-SHA256 of the exact bytes (reference §7.3-7.4). Bounces and unsubscribes arrive only as
`mautic.lead_channel_subscription_changed`; there is no `email_on_bounce`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from app.providers.base import BadSignature, InboundEvent, InboundKind, MalformedPayload
from app.providers.mautic.client import contact_fields, email_dnc, is_ours

MAX_BODY = 1_000_000
SIGNATURE_HEADER = "webhook-signature"
# Channel statuses (reference §2.4) → the neutral effect; `manual` is ours or a Mautic user's.
SUBSCRIPTION_KINDS = {
    "unsubscribed": InboundKind.unsubscribe,
    "bounced": InboundKind.cleaned,
    "manual": InboundKind.unsubscribe,
    "contactable": InboundKind.subscribe,
}


def signature(body: bytes, secret: str) -> str:
    """Mautic's `Webhook-Signature` for `body`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(body: bytes, headers: Mapping[str, str], secret: str | None) -> None:
    """BadSignature unless the delivery carries the signature of these exact bytes (constant
    time; a missing secret refuses everything)."""
    given = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER), None)
    if not secret or not given:
        raise BadSignature("missing Webhook-Signature")
    if not hmac.compare_digest(signature(body, secret).encode(), given.strip().encode()):
        raise BadSignature("Webhook-Signature does not match")


def _fired_at(item: Mapping[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(item.get("timestamp")))
    except ValueError:
        return datetime.now(UTC)


def _event(trigger: str, item: dict[str, Any]) -> InboundEvent:
    raw = item.get("contact")
    contact: dict[str, Any] = raw if isinstance(raw, dict) else {}
    fields = contact_fields(contact)
    email = fields.get("email") if isinstance(fields.get("email"), str) else None
    kind = InboundKind.ignored
    reason = None
    if trigger == "mautic.lead_channel_subscription_changed" and item.get("channel") == "email":
        status = str(item.get("new_status") or "")
        kind = SUBSCRIPTION_KINDS.get(status, InboundKind.ignored)
        reason = status
        if status == "manual" and is_ours(email_dnc(contact)):
            kind = InboundKind.ignored  # the echo of our own opt-out
    elif trigger == "mautic.lead_post_save_update":
        kind = InboundKind.profile
    elif trigger == "mautic.lead_post_delete":
        kind = InboundKind.archived  # gone from Mautic, not an opt-out
    return InboundEvent(
        kind=kind,
        type=trigger,
        fired_at=_fired_at(item),
        payload=item,
        email=email,
        reason=reason,
        fields={k: v for k, v in fields.items() if k != "email"},
    )


def parse(body: bytes, *, headers: Mapping[str, str], secret: str | None) -> list[InboundEvent]:
    """Verify, then every event of the delivery in order (unknown top-level keys skipped)."""
    if len(body) > MAX_BODY:
        raise MalformedPayload("delivery too large")
    verify(body, headers, secret)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedPayload("not JSON") from None
    if not isinstance(data, dict):
        raise MalformedPayload("not a Mautic delivery")
    events: list[InboundEvent] = []
    for trigger, items in data.items():
        if not trigger.startswith("mautic.") or not isinstance(items, list):
            continue
        events.extend(_event(trigger, item) for item in items if isinstance(item, dict))
    return events
