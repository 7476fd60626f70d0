"""Mailchimp inbound: webhook bodies parsed and mapped onto neutral events, and the audience
webhook we keep registered (reference §7.1).

Bodies are form-encoded, PHP-style bracket keys, `fired_at` in UTC.

`type=unsubscribe&fired_at=2009-03-26 21:40:57&data[email]=a@b.c&data[merges][FNAME]=Ada`
becomes `{"type": "unsubscribe", "fired_at": "…", "data": {"email": "a@b.c",
"merges": {"FNAME": "Ada"}}}`. Anything that is not such a body raises MalformedPayload.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from app.providers.base import InboundEvent, InboundKind, MalformedPayload, WebhookCall
from app.providers.mailchimp.client import MailchimpClient

MAX_FIELDS = 1000  # a real delivery has a few dozen
MAX_DEPTH = 6  # data[merges][GROUPINGS][0][groups] is the deepest Mailchimp sends

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


@dataclass(slots=True, frozen=True)
class MailchimpEvent:
    """One parsed delivery."""

    type: str
    fired_at: datetime
    data: dict[str, Any]
    payload: dict[str, Any]  # the whole parsed body, as stored in the inbox

    def text(self, *path: str) -> str | None:
        """A string under `data` (e.g. text("merges", "FNAME")); None when absent."""
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node if isinstance(node, str) else None


def parse_form(body: bytes) -> dict[str, Any]:
    """Decode a form body into nested dicts; `a[b][c]=v` sets out["a"]["b"]["c"] = v."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not a form-encoded body ({type(exc).__name__})") from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if match is None:
            raise MalformedPayload(f"unbalanced brackets in field name {key[:80]!r}")
        path = [match.group(1), *_PART.findall(match.group(2))]
        if len(path) > MAX_DEPTH:
            raise MalformedPayload(f"field name nested too deep: {key[:80]!r}")
        node = out
        for part in path[:-1]:
            part = part or str(len(node))  # `a[]` appends, PHP-style
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise MalformedPayload(f"field {key[:80]!r} is both a value and a group")
            node = child
        leaf = path[-1] or str(len(node))
        if isinstance(node.get(leaf), dict):
            raise MalformedPayload(f"field {key[:80]!r} is both a value and a group")
        node[leaf] = value  # a repeated name: the last value wins, as in PHP
    return out


def parse_fired_at(value: str) -> datetime:
    """`YYYY-MM-DD HH:MM:SS` (UTC, Mailchimp's format) or ISO 8601; MalformedPayload else."""
    value = value.strip()
    try:
        if len(value) == 19 and value[10] == " ":
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedPayload(f"fired_at {value[:40]!r} is not a time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_mailchimp(body: bytes) -> MailchimpEvent:
    """A Mailchimp delivery: `type` and `fired_at` required, `data` a group when present."""
    form = parse_form(body)
    kind = form.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise MalformedPayload("the body has no 'type'")
    fired = form.get("fired_at")
    if not isinstance(fired, str):
        raise MalformedPayload("the body has no 'fired_at'")
    data = form.get("data", {})
    if not isinstance(data, dict):
        raise MalformedPayload("'data' must be a group of fields")
    return MailchimpEvent(
        type=kind.strip(), fired_at=parse_fired_at(fired), data=data, payload=form
    )


# --- neutral events ----------------------------------------------------------------------

EVENT_TYPES = frozenset({"subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign"})


def _merges(event: MailchimpEvent) -> dict[str, Any]:
    merges = event.data.get("merges")
    return merges if isinstance(merges, dict) else {}


def to_event(event: MailchimpEvent) -> InboundEvent:
    """A Mailchimp delivery as the neutral event it means (DESIGN §7's table)."""
    kind = InboundKind.ignored
    email = event.text("email")
    reason: str | None = None
    new_email: str | None = None
    fields: dict[str, Any] = {}
    interests: list[str] | None = None
    match event.type:
        case "unsubscribe":
            # action=delete: the member was removed (archived) in Mailchimp, not unsubscribed.
            kind = (
                InboundKind.archived
                if event.text("action") == "delete"
                else InboundKind.unsubscribe
            )
            reason = event.text("reason")
        case "cleaned":
            kind = InboundKind.cleaned
            reason = event.text("reason") or "hard"
        case "subscribe":
            kind = InboundKind.subscribe
            fields = _merges(event)
        case "profile":
            kind = InboundKind.profile
            fields = _merges(event)
            interests = _interests(fields)
        case "upemail":
            kind = InboundKind.email_change
            email, new_email = event.text("old_email"), event.text("new_email")
    return InboundEvent(
        kind=kind,
        type=event.type,
        fired_at=event.fired_at,
        payload=event.payload,
        email=email,
        new_email=new_email,
        reason=reason,
        fields=fields,
        audience_id=event.text("list_id"),
        interests=interests,
    )


def _interests(merges: dict[str, Any]) -> list[str] | None:
    """The chosen interest names: INTERESTS (comma-joined), else every GROUPINGS' groups."""
    joined = merges.get("INTERESTS")
    if not isinstance(joined, str):
        groupings = merges.get("GROUPINGS")
        if not isinstance(groupings, dict):
            return None
        parts = [g.get("groups") for g in groupings.values() if isinstance(g, dict)]
        joined = ", ".join(p for p in parts if isinstance(p, str) and p)
    return [name.strip() for name in joined.split(",") if name.strip()]


# --- the audience webhook ------------------------------------------------------------------

# Sources user and admin only: our own API writes (source `api`) must not echo back.
EVENTS = {
    "subscribe": True,
    "unsubscribe": True,
    "profile": True,
    "cleaned": True,
    "upemail": True,
    "campaign": False,
}
SOURCES = {"user": True, "admin": True, "api": False}


def _is_ours(hook: dict[str, Any], webhook_token: str) -> bool:
    path = urlsplit(str(hook.get("url") or "")).path
    return path.endswith(f"/api/webhooks/mailchimp/{webhook_token}")


def _is_right(hook: dict[str, Any], url: str) -> bool:
    events = hook.get("events") or {}
    sources = hook.get("sources") or {}
    return (
        hook.get("url") == url
        and all(bool(events.get(k)) == v for k, v in EVENTS.items())
        and all(bool(sources.get(k)) == v for k, v in SOURCES.items())
    )


class MailchimpInbound:
    """Mailchimp's side of inbound: parse deliveries, keep our audience webhook right."""

    event_types = EVENT_TYPES
    # Mailchimp posts its deliveries form-encoded, always; anything else is not one of them.
    media_type = "application/x-www-form-urlencoded"

    def parse(
        self, body: bytes, *, headers: Mapping[str, str], secret: str | None
    ) -> list[InboundEvent]:
        """One form-encoded delivery, one event (the URL token is the only proof there is)."""
        return [to_event(parse_mailchimp(body))]

    def dedupe_key(self, connection_id: str, event: InboundEvent, body: bytes) -> str:
        """Provider, connection and the whole delivery (type, fired_at, data): a redelivery is
        the same key; two different events in one second (two profile edits) are two."""
        canonical = orjson.dumps(event.payload, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(canonical).hexdigest()
        return f"mailchimp:{connection_id}:{event.type}:{event.fired_at.isoformat()}:{digest}"

    async def ensure_webhook(
        self,
        client: Any,
        audience_id: str,
        *,
        url: str,
        webhook_token: str,
        call: WebhookCall,
    ) -> str | None:
        """Make the audience carry exactly one webhook of ours, with our URL, events and sources.

        Keeps a right one; deletes ours that are wrong (old URL, `api` source on, events off) or
        duplicated; creates it when missing (Mailchimp then validates the URL with a GET, which
        must answer 200). `call` wraps every request (the worker passes the account's gate).
        """
        mc: MailchimpClient = client
        hooks: list[dict[str, Any]] = await call(lambda: mc.list_webhooks(audience_id))
        ours = [h for h in hooks if _is_ours(h, webhook_token)]
        keep = next((h for h in ours if _is_right(h, url)), None)
        for hook in ours:
            if hook is not keep:
                await call(functools.partial(mc.delete_webhook, audience_id, str(hook["id"])))
        if keep is not None:
            return str(keep["id"])
        created: str = await call(
            lambda: mc.create_webhook(audience_id, url, events=EVENTS, sources=SOURCES)
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
        """Delete our webhook(s) from the audience (disconnect, audience change); 404 is fine."""
        mc: MailchimpClient = client
        hooks: list[dict[str, Any]] = await call(lambda: mc.list_webhooks(audience_id))
        ids = {str(h["id"]) for h in hooks if _is_ours(h, webhook_token)}
        if known_id:
            ids.add(known_id)
        for hook_id in sorted(ids):
            await call(functools.partial(mc.delete_webhook, audience_id, hook_id))
        return len(ids)
