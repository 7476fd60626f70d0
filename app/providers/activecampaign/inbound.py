"""ActiveCampaign inbound: webhook deliveries parsed into neutral events, and the list webhook
we keep registered (reference §8).

Deliveries are form-encoded with PHP-style keys (`contact[email]`, `contact[fields][dob]`),
never retried and carry no signature: the secret token in our URL is the only proof, and the
scheduled pull catches what a lost delivery missed. Our webhook listens to the sources
`public`, `admin` and `system`, never `api`, so our own writes do not come back.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from app.providers.activecampaign.client import ActiveCampaignClient
from app.providers.activecampaign.spec import PROVIDER
from app.providers.base import InboundEvent, InboundKind, MalformedPayload, WebhookCall

MAX_FIELDS = 2000
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")

EVENTS = ["subscribe", "unsubscribe", "bounce", "update"]
SOURCES = ["public", "admin", "system"]
EVENT_TYPES = frozenset({*EVENTS, "contact_tag_added", "contact_tag_removed"})
WEBHOOK_NAME = "Audience Sync"
# The contact's own attributes as deliveries name them → the field keys our rules use.
ATTRIBUTES = {"first_name": "firstName", "last_name": "lastName", "phone": "phone"}


def parse_form(body: bytes) -> dict[str, Any]:
    """A form body as nested dicts (`a[b][c]=v` → out["a"]["b"]["c"]); MalformedPayload else."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
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
        if len(path) > 4:
            raise MalformedPayload(f"field name nested too deep: {key[:80]!r}")
        node = out
        for part in path[:-1]:
            child = node.setdefault(part or str(len(node)), {})
            if not isinstance(child, dict):
                raise MalformedPayload(f"field {key[:80]!r} is both a value and a group")
            node = child
        leaf = path[-1] or str(len(node))
        if isinstance(node.get(leaf), dict):
            raise MalformedPayload(f"field {key[:80]!r} is both a value and a group")
        node[leaf] = value
    return out


def parse_time(value: str) -> datetime:
    """`date_time`: account-local ISO 8601 with its offset, or the old `YYYY-MM-DD HH:MM:SS`
    (read as UTC)."""
    value = value.strip()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedPayload(f"date_time {value[:40]!r} is not a time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(node: Any, *path: str) -> str | None:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, str) else None


def _fields(contact: Mapping[str, Any]) -> dict[str, Any]:
    """The contact's attributes and custom fields as our rules key them (custom fields by id
    and by upper-case personalization tag, whichever the delivery carries)."""
    out: dict[str, Any] = {}
    for name, key in ATTRIBUTES.items():
        if isinstance(contact.get(name), str):
            out[key] = contact[name]
    custom = contact.get("fields")
    if isinstance(custom, dict):
        for key, value in custom.items():
            if isinstance(value, str):
                out[key if key.isdigit() else key.upper()] = value
    return out


def to_event(form: dict[str, Any]) -> InboundEvent:
    """A delivery as the neutral event it means (DESIGN §7)."""
    kind_name = form.get("type")
    if not isinstance(kind_name, str) or not kind_name.strip():
        raise MalformedPayload("the body has no 'type'")
    fired = form.get("date_time")
    if not isinstance(fired, str):
        raise MalformedPayload("the body has no 'date_time'")
    contact = form.get("contact")
    if not isinstance(contact, dict):
        contact = {}
    kind_name = kind_name.strip()
    kind = InboundKind.ignored
    reason: str | None = None
    fields: dict[str, Any] = {}
    if form.get("initiated_from") == "api":
        pass  # our own writes (a hook with the api source on): never an echo
    elif kind_name == "unsubscribe":
        kind, reason = InboundKind.unsubscribe, _text(form, "unsubscribe", "reason") or None
    elif kind_name == "bounce":
        kind, reason = InboundKind.cleaned, _text(form, "bounce", "type") or "hard"
    elif kind_name == "subscribe":
        kind, fields = InboundKind.subscribe, _fields(contact)
    elif kind_name == "update":
        kind, fields = InboundKind.profile, _fields(contact)
    listid = _text(form, "list")
    person = (_text(contact, "id") or "").strip()
    return InboundEvent(
        kind=kind,
        type=kind_name,
        fired_at=parse_time(fired),
        payload=form,
        email=_text(contact, "email"),
        reason=reason,
        fields=fields,
        audience_id=listid if listid and listid != "0" else None,
        # `contact[id]`: the person's id, which matches an event to its contact where the
        # address alone would miss (or name another person): InboundApplier.attributed.
        person_id=person if person and person != "0" else None,
    )


def _is_ours(hook: Mapping[str, Any], webhook_token: str, list_id: str | None = None) -> bool:
    """Our hook (by the token in its URL); for one list when `list_id` is given (webhooks are
    account-wide, and a connection may map several lists, each with its own hook)."""
    path = urlsplit(str(hook.get("url") or "")).path
    if not path.endswith(f"/api/webhooks/{PROVIDER}/{webhook_token}"):
        return False
    return list_id is None or str(hook.get("listid") or "0") in (list_id, "0")


class ActiveCampaignInbound:
    """ActiveCampaign's side of inbound: parse deliveries, keep our list webhook."""

    event_types = EVENT_TYPES
    media_type = "application/x-www-form-urlencoded"

    def parse(
        self, body: bytes, *, headers: Mapping[str, str], secret: str | None
    ) -> list[InboundEvent]:
        """One delivery, one event (no signature exists: the URL token is the proof)."""
        return [to_event(parse_form(body))]

    def dedupe_key(self, connection_id: str, event: InboundEvent, body: bytes) -> str:
        """The delivery as sent: ActiveCampaign's duplicates are byte-identical."""
        digest = hashlib.sha256(body).hexdigest()
        return f"{PROVIDER}:{connection_id}:{event.type}:{digest}"

    async def ensure_webhook(
        self,
        client: Any,
        audience_id: str,
        *,
        url: str,
        webhook_token: str,
        call: WebhookCall,
    ) -> str | None:
        """A fresh webhook of ours for the list, then every older one of ours for it deleted.

        Always recreated: a hook ActiveCampaign deactivated (after a 410) still shows in the
        API and only delete-and-recreate revives it; the moment both exist a delivery may
        come twice, which the inbox's dedupe absorbs.
        """
        ac: ActiveCampaignClient = client
        hooks: list[dict[str, Any]] = await call(ac.list_webhooks)
        created: str = await call(
            functools.partial(
                ac.create_webhook,
                name=WEBHOOK_NAME,
                url=url,
                events=list(EVENTS),
                sources=list(SOURCES),
                listid=audience_id,
            )
        )
        for hook in hooks:
            if _is_ours(hook, webhook_token, audience_id) and str(hook.get("id")) != created:
                await call(functools.partial(ac.delete_webhook, str(hook["id"])))
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
        """Delete our webhook(s) of the list (disconnect, list change); one already gone is
        fine."""
        ac: ActiveCampaignClient = client
        hooks: list[dict[str, Any]] = await call(ac.list_webhooks)
        ids = {str(h["id"]) for h in hooks if _is_ours(h, webhook_token, audience_id)}
        if known_id:
            ids.add(known_id)
        for hook_id in sorted(ids):
            await call(functools.partial(ac.delete_webhook, hook_id))
        return len(ids)
