"""Mautic webhook deliveries: the signature over the raw body and the neutral events they mean.

`MauticInbound` is the registry's adapter: it verifies and parses deliveries and keeps our
hook (`/api/hooks`) registered, signed with the connection's secret.

A delivery is `{trigger: [item, …], …}` (several types in one POST in queue mode; the "Send
test payload" button adds a top-level `timestamp`), signed `Webhook-Signature` = base64
HMAC-SHA256 of the exact bytes (reference §7.3-7.4). Bounces and unsubscribes arrive only as
`mautic.lead_channel_subscription_changed`; there is no `email_on_bounce`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from app.providers.base import (
    BadSignature,
    InboundEvent,
    InboundKind,
    MalformedPayload,
    WebhookCall,
)
from app.providers.mautic.client import (
    MauticClient,
    contact_fields,
    email_dnc,
    is_complaint,
    is_ours,
)

MAX_BODY = 512 * 1024
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
        dnc = email_dnc(contact)
        if status == "manual" and is_ours(dnc):
            kind = InboundKind.ignored  # the echo of our own opt-out
        elif status == "unsubscribed" and is_complaint(dnc):
            kind, reason = InboundKind.complained, "abuse"
    elif trigger == "mautic.lead_post_save_update":
        kind = InboundKind.profile
    elif trigger == "mautic.form_on_submit":
        # A person signing up through a Mautic form (a new lead with referral=mautic). Not
        # `lead_post_save_new`: our own API creations fire that one too.
        submission = item.get("submission")
        lead = submission.get("lead") if isinstance(submission, dict) else None
        if isinstance(lead, dict):
            contact = lead
            fields = contact_fields(lead)
            email = fields.get("email") if isinstance(fields.get("email"), str) else None
            kind = InboundKind.subscribe
    elif trigger == "mautic.lead_post_delete":
        kind = InboundKind.archived  # gone from Mautic, not an opt-out
    elif trigger == "mautic.lead_list_change":
        return _segment_change(item, email)
    # A delete's contact is serialized after removal (`id` null): the delivery's own `id`
    # names the person.
    person = contact.get("id") or (item.get("id") if kind is InboundKind.archived else None)
    return InboundEvent(
        kind=kind,
        type=trigger,
        fired_at=_fired_at(item),
        payload=item,
        email=email,
        reason=reason,
        fields={k: v for k, v in fields.items() if k != "email"},
        person_id=str(person) if person else None,
    )


def _segment_change(item: dict[str, Any], email: str | None) -> InboundEvent:
    """A segment joined or left: a preference change when a mapping maps that segment
    (the preference centre), nothing otherwise. It carries no fields (not a data edit)."""
    segment = item.get("segment")
    segment_id = segment.get("id") if isinstance(segment, dict) else None
    action = item.get("action")
    if segment_id is None or action not in ("added", "removed"):
        return InboundEvent(
            kind=InboundKind.ignored,
            type="mautic.lead_list_change",
            fired_at=_fired_at(item),
            payload=item,
            email=email,
        )
    return InboundEvent(
        kind=InboundKind.profile,
        type="mautic.lead_list_change",
        fired_at=_fired_at(item),
        payload=item,
        email=email,
        interest_changes={str(segment_id): action == "added"},
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


# --- our webhook ---------------------------------------------------------------------------

# What carries the person's decisions: DNC changes (unsubscribe, bounce, complaint), form
# signups, deletes, edits and segment changes (the preference centre's segments).
# `lead_post_save_new` is left out: our own creations fire it.
TRIGGERS = (
    "mautic.lead_channel_subscription_changed",
    "mautic.form_on_submit",
    "mautic.lead_post_save_update",
    "mautic.lead_post_delete",
    "mautic.lead_list_change",
)
EVENT_TYPES = frozenset(TRIGGERS)
HOOK_NAME = "Audience Sync"


def _is_ours(hook: Mapping[str, Any], webhook_token: str) -> bool:
    path = urlsplit(str(hook.get("webhookUrl") or "")).path
    return path.endswith(f"/api/webhooks/mautic/{webhook_token}")


def _is_right(hook: Mapping[str, Any], url: str, secret: str | None) -> bool:
    return (
        hook.get("webhookUrl") == url
        and set(hook.get("triggers") or []) == set(TRIGGERS)
        and hook.get("secret") == secret
        and hook.get("isPublished") in (True, 1, "1")
    )


class MauticInbound:
    """Mautic's side of inbound: signed JSON deliveries, our hook kept right."""

    event_types = EVENT_TYPES
    media_type = "application/json"
    max_body = MAX_BODY  # queue mode posts up to 10 events, each a whole contact

    def parse(
        self, body: bytes, *, headers: Mapping[str, str], secret: str | None
    ) -> list[InboundEvent]:
        """Verify the signature over the raw bytes, then every event of the delivery."""
        return parse(body, headers=headers, secret=secret)

    def dedupe_key(self, connection_id: str, event: InboundEvent, body: bytes) -> str:
        """Per event, not per delivery: queue mode regroups events into other POSTs, and a
        duplicated delivery repeats the same items (type, time, contact, values)."""
        canonical = orjson.dumps(event.payload, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(canonical).hexdigest()
        return f"mautic:{connection_id}:{event.type}:{digest}"

    async def ensure_webhook(
        self,
        client: Any,
        audience_id: str,
        *,
        url: str,
        webhook_token: str,
        call: WebhookCall,
    ) -> str | None:
        """Exactly one published hook of ours at `url`, with our triggers and secret; an
        unpublished one (Mautic stops hooks after failures) is replaced."""
        mc: MauticClient = client
        hooks: list[dict[str, Any]] = await call(mc.list_hooks)
        ours = [h for h in hooks if _is_ours(h, webhook_token)]
        keep = next((h for h in ours if _is_right(h, url, mc.webhook_secret)), None)
        for hook in ours:
            if hook is not keep:
                await call(functools.partial(mc.delete_hook, str(hook["id"])))
        if keep is not None:
            return str(keep["id"])
        secret = mc.webhook_secret
        if not secret:
            raise ValueError("the connection has no webhook secret (reconnect Mautic)")
        created: str = await call(
            functools.partial(
                mc.create_hook, name=HOOK_NAME, url=url, triggers=TRIGGERS, secret=secret
            )
        )
        return created

    async def remove_webhooks(
        self,
        client: Any,
        audience_id: str,
        *,
        webhook_token: str,
        known_id: str | None,
        call: WebhookCall,
    ) -> int:
        """Delete our hook(s) (disconnect, segment change); one already gone is fine."""
        mc: MauticClient = client
        hooks: list[dict[str, Any]] = await call(mc.list_hooks)
        ids = {str(h["id"]) for h in hooks if _is_ours(h, webhook_token)}
        if known_id:
            ids.add(known_id)
        for hook_id in sorted(ids):
            await call(functools.partial(mc.delete_hook, hook_id))
        return len(ids)
