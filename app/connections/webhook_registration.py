"""The audience webhook the service registers (reference §7.1): one place, idempotent.

`ensure_webhook` is called after a connect or an audience choice and again by every reconcile
run, so a webhook someone deleted at Mailchimp, or one left pointing at an old
PUBLIC_BASE_URL, comes back by itself. Our webhook is recognised by its URL path, which
carries the connection's random `webhook_token`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from app.providers.mailchimp.client import MailchimpClient

T = TypeVar("T")
Call = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]

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
WEBHOOK_PATH = "/api/webhooks/mailchimp/"


def webhook_url(public_base_url: str, webhook_token: str) -> str:
    """Where Mailchimp posts this connection's events."""
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PATH}{webhook_token}"


@dataclass(slots=True)
class WebhookResult:
    """What `ensure_webhook` found or did."""

    webhook_id: str
    created: bool
    removed: int  # stale or duplicate webhooks of ours that were deleted


async def _direct(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


def _is_ours(hook: dict[str, Any], webhook_token: str) -> bool:
    path = urlsplit(str(hook.get("url") or "")).path
    return path.endswith(WEBHOOK_PATH + webhook_token)


def _is_right(hook: dict[str, Any], url: str) -> bool:
    events = hook.get("events") or {}
    sources = hook.get("sources") or {}
    return (
        hook.get("url") == url
        and all(bool(events.get(k)) == v for k, v in EVENTS.items())
        and all(bool(sources.get(k)) == v for k, v in SOURCES.items())
    )


async def ensure_webhook(
    client: MailchimpClient,
    audience_id: str,
    *,
    url: str,
    webhook_token: str,
    call: Call[Any] = _direct,
) -> WebhookResult:
    """Make the audience carry exactly one webhook of ours, with our URL, events and sources.

    Keeps a right one; deletes ours that are wrong (old URL, `api` source on, events off) or
    duplicated; creates it when missing (Mailchimp then validates the URL with a GET, which must
    answer 200). `call` wraps every request (the worker passes the account's gate). Raises the
    provider's errors; callers decide whether that is fatal.
    """
    hooks: list[dict[str, Any]] = await call(lambda: client.list_webhooks(audience_id))
    ours = [h for h in hooks if _is_ours(h, webhook_token)]
    keep = next((h for h in ours if _is_right(h, url)), None)
    removed = 0
    for hook in ours:
        if hook is keep:
            continue
        hook_id = str(hook["id"])
        await call(functools.partial(client.delete_webhook, audience_id, hook_id))
        removed += 1
    if keep is not None:
        return WebhookResult(str(keep["id"]), created=False, removed=removed)
    created: str = await call(
        lambda: client.create_webhook(audience_id, url, events=EVENTS, sources=SOURCES)
    )
    return WebhookResult(created, created=True, removed=removed)


async def remove_webhooks(
    client: MailchimpClient,
    audience_id: str,
    *,
    webhook_token: str,
    known_id: str | None,
    call: Call[Any] = _direct,
) -> int:
    """Delete our webhook(s) from the audience (disconnect, audience change); 404 is fine."""
    hooks: list[dict[str, Any]] = await call(lambda: client.list_webhooks(audience_id))
    ids = {str(h["id"]) for h in hooks if _is_ours(h, webhook_token)}
    if known_id:
        ids.add(known_id)
    for hook_id in sorted(ids):
        await call(functools.partial(client.delete_webhook, audience_id, hook_id))
    return len(ids)
