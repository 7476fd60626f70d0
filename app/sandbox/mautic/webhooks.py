"""Webhook delivery as Mautic does it (reference §7): immediate or queued, signed, lossy.

Immediate mode posts each event on its own, inside the request that caused it, no retry.
Queue mode stores events; `process()` (the `mautic:webhooks:process` cron, run every
`webhook_cron_seconds` or through the control API) posts up to `webhook_limit` events per
body, grouped by trigger. Failure policy "5.x" deletes rows on any HTTP answer (a non-2xx
loses them), keeps them on a transport error, unpublishes after `webhook_disable_limit`
failed attempts in a row or at once on 410; "7.x" keeps failed rows with growing delays and
skips an unhealthy webhook for a while.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.sandbox.mautic.config import MauticConfig
from app.sandbox.mautic.encoding import php_json
from app.sandbox.mautic.model import Hook, Instance, QueueRow
from app.sandbox.mautic.render import iso

log = logging.getLogger(__name__)

TWO_DAYS = 2 * 86400
Pending = list[tuple[Hook, str, dict[str, Any]]]
# Immediate-mode events of the request being served (each request runs in its own context),
# so concurrent requests each send, and wait for, their own deliveries only.
_PENDING: ContextVar[Pending | None] = ContextVar("mautic_sandbox_pending", default=None)
TRIGGERS: dict[str, tuple[str, str]] = {
    "mautic.lead_post_save_new": (
        "Contact Identified Event",
        "Triggered when a contact is identified.",
    ),
    "mautic.lead_post_save_update": (
        "Contact Updated Event",
        "Triggered when a contact is updated.",
    ),
    "mautic.lead_points_change": (
        "Contact Points Changed Event",
        "Triggered when a contact's points change.",
    ),
    "mautic.lead_post_delete": ("Contact Deleted Event", "Triggered when a contact is deleted."),
    "mautic.lead_channel_subscription_changed": (
        "Contact Channel Subscription Change Event",
        "Triggered when a contact's channel subscription changes.",
    ),
    "mautic.lead_company_change": (
        "Contact Company Subscription Change Event",
        "Triggered when a contact is added to or removed from a company.",
    ),
    "mautic.lead_list_change": (
        "Segment membership changed",
        "Triggered when a contact is added to or removed from a segment.",
    ),
    "mautic.form_on_submit": ("Form Submit Event", "Triggered when a form is submitted."),
    "mautic.email_on_send": ("Email Send Event", "Triggered when an email is sent."),
    "mautic.email_on_open": ("Email Open Event", "Triggered when an email is opened."),
    "mautic.page_on_hit": ("Page Hit Event", "Triggered when a page is hit."),
}


def sign(body: bytes, secret: str) -> str:
    """`Webhook-Signature`: base64 of HMAC-SHA256 over the exact body bytes."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def private_url(url: str) -> bool:
    """Whether `url` points at a loopback or private address (the 7.x SSRF block)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local:
            return True
    return False


_SAMPLE_CONTACT: dict[str, Any] = {
    "id": 52,
    "points": 5,
    "color": None,
    "fields": {
        "core": {
            "email": {
                "id": "6",
                "label": "Email",
                "alias": "email",
                "type": "email",
                "group": "core",
                "object": "lead",
                "is_fixed": "1",
                "value": "john@doe.name",
            }
        },
        "social": [],
        "personal": [],
        "professional": [],
    },
}


def _sample(trigger: str) -> dict[str, Any]:
    """A shipped `Assets/WebhookPayload/*.json` sample (trimmed), as the test button sends."""
    contact = dict(_SAMPLE_CONTACT)
    if trigger == "mautic.lead_post_delete":
        return {
            "id": 52,
            "contact": {**contact, "id": None},
            "timestamp": "2017-06-19T09:34:55+00:00",
        }
    if trigger == "mautic.lead_channel_subscription_changed":
        return {
            "contact": contact,
            "channel": "email",
            "old_status": "contactable",
            "new_status": "manual",
            "timestamp": "2017-12-01T00:05:18-06:00",
        }
    return {"contact": contact, "timestamp": "2017-06-19T09:31:18+00:00"}


class WebhookHub:
    """Queues, sends and logs webhook deliveries for one instance."""

    def __init__(
        self,
        instance: Callable[[], Instance],
        config: Callable[[], MauticConfig],
        now: Callable[[], float],
    ) -> None:
        self._instance = instance
        self._config = config
        self._now = now
        self.log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.immediate: Pending = []  # events fired outside any request
        self.site_url = "http://127.0.0.1"
        self.rng = random.Random(0)
        self._client: httpx.AsyncClient | None = None
        self._cron: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False)
        return self._client

    async def aclose(self) -> None:
        if self._cron is not None:
            self._cron.cancel()
            self._cron = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def clear(self) -> None:
        self.log.clear()
        self.immediate.clear()

    # -- recording --------------------------------------------------------------------------

    def record(self, trigger: str, item: dict[str, Any]) -> None:
        """An event happened: queue it for every published hook subscribed to `trigger`."""
        instance = self._instance()
        config = self._config()
        now = self._now()
        item = {**item, "timestamp": iso(now)}
        for hook in instance.hooks.values():
            if not hook.is_published or trigger not in hook.triggers:
                continue
            if config.queue_mode == "immediate_process":
                pending = _PENDING.get()
                (self.immediate if pending is None else pending).append((hook, trigger, item))
            else:
                row = QueueRow(instance.next_id("queue"), hook.id, trigger, item, now)
                instance.queue[row.id] = row

    def begin(self) -> None:
        """Collect the immediate-mode events of the current request from here on."""
        _PENDING.set([])

    async def flush_immediate(self) -> None:
        """Send what the current request fired, one event per POST, in order (no retry)."""
        pending = _PENDING.get()
        for queue in (self.immediate,) if pending is None else (pending, self.immediate):
            while queue:
                hook, trigger, item = queue.pop(0)
                if hook.is_published:
                    await self._send(hook, {trigger: [item]}, rows=[])

    async def send_test(self, hook: Hook) -> int | None:
        """`sendHookTestAction`: 2017-era samples per trigger and a top-level `timestamp`."""
        now = iso(self._now())
        body: dict[str, Any] = {t: [_sample(t)] for t in hook.triggers}
        body["timestamp"] = now
        raw = php_json(body)
        headers = self._headers(raw, hook.secret)
        try:
            response = await self.client.post(
                hook.url,
                content=raw,
                headers=headers,
                timeout=self._config().webhook_timeout_seconds,
            )
        except httpx.HTTPError:
            return None
        return response.status_code

    def _headers(self, raw: bytes, secret: str) -> dict[str, str]:
        config = self._config()
        return {
            "Content-Type": "application/json",
            "X-Origin-Base-URL": config.site_url or self.site_url,
            "Webhook-Signature": sign(raw, secret),
            "User-Agent": config.webhook_user_agent,
        }

    # -- queue processing -------------------------------------------------------------------

    async def process(self, hook_id: int | None = None) -> int:
        """`mautic:webhooks:process`: send every due queued row; return the POSTs made."""
        async with self._lock:
            instance = self._instance()
            config = self._config()
            posts = 0
            for hook in list(instance.hooks.values()):
                if hook_id is not None and hook.id != hook_id:
                    continue
                skipped: set[int] = set()
                while hook.is_published and hook.unhealthy_until <= self._now():
                    now = self._now()
                    rows = [
                        r
                        for r in instance.queue.values()
                        if r.hook_id == hook.id and r.not_before <= now and r.id not in skipped
                    ]
                    if not rows:
                        break
                    direction = hook.events_orderby_dir or config.events_orderby_dir
                    rows.sort(key=lambda r: r.id, reverse=direction == "DESC")
                    batch = rows[: max(1, config.webhook_limit)]
                    body: dict[str, list[dict[str, Any]]] = {}
                    for row in batch:
                        body.setdefault(row.trigger, []).append(row.payload)
                    posts += 1
                    delivered = await self._send(hook, body, rows=batch)
                    if not delivered:
                        skipped |= {r.id for r in batch}
            for row_id in [
                r.id for r in instance.queue.values() if r.hook_id not in instance.hooks
            ]:
                instance.queue.pop(row_id, None)
            return posts

    def start_cron(self) -> None:
        """Run the queue processor every `webhook_cron_seconds` (queue mode only)."""
        if self._cron is None:
            self._cron = asyncio.get_running_loop().create_task(self._cron_loop())

    async def _cron_loop(self) -> None:
        while True:
            interval = self._config().webhook_cron_seconds
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval <= 0 or self._config().queue_mode != "command_process":
                continue
            try:
                await self.process()
            except Exception:  # pragma: no cover - a sandbox bug must not stop the cron
                log.exception("mautic sandbox: webhook queue processing failed")

    # -- one POST ---------------------------------------------------------------------------

    def _faulty(self, body: dict[str, list[dict[str, Any]]]) -> tuple[bool, bool]:
        """Roll the webhook fault dice: (drop, duplicate); may blank DNC events' fields."""
        rates = self._config().webhook_fault_rates
        drop = rates.get("drop", 0) > 0 and self.rng.random() < rates["drop"]
        duplicate = rates.get("duplicate", 0) > 0 and self.rng.random() < rates["duplicate"]
        if rates.get("empty_fields", 0) > 0:
            for item in body.get("mautic.lead_channel_subscription_changed", []):
                if self.rng.random() < rates["empty_fields"] and isinstance(
                    item.get("contact"), dict
                ):
                    item["contact"] = {**item["contact"], "fields": [], "doNotContact": [{}]}
        return drop, duplicate

    async def _send(
        self, hook: Hook, body: dict[str, list[dict[str, Any]]], *, rows: list[QueueRow]
    ) -> bool:
        """POST one body; apply the failure policy; True when the rows are done with."""
        instance = self._instance()
        config = self._config()
        drop, duplicate = self._faulty(body)
        raw = php_json(body)
        headers = self._headers(raw, hook.secret)
        entry: dict[str, Any] = {
            "hook_id": hook.id,
            "url": hook.url,
            "at": self._now(),
            "events": sum(len(v) for v in body.values()),
            "triggers": sorted(body),
            "body": raw.decode(),
            "headers": headers,
            "status": None,
            "error": None,
            "fault": "drop" if drop else "duplicate" if duplicate else None,
        }
        self.log.append(entry)
        if drop:
            for row in rows:
                instance.queue.pop(row.id, None)
            return True
        if config.webhook_delay_ms > 0:
            await asyncio.sleep(config.webhook_delay_ms / 1000)
        status: int | None = None
        for _ in range(2 if duplicate else 1):
            try:
                response = await self.client.post(
                    hook.url, content=raw, headers=headers, timeout=config.webhook_timeout_seconds
                )
                status = response.status_code
            except httpx.HTTPError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                status = None
        entry["status"] = status
        hook.attempts.append(status if status is not None else 0)
        del hook.attempts[: -max(config.webhook_disable_limit, 1)]
        ok = status is not None and 200 <= status < 300
        if status == 410:
            hook.is_published = False
            hook.stop_reason = "410"
        if config.webhook_policy == "5.x":
            if status is not None:  # deleted on any HTTP answer, before the status is read
                for row in rows:
                    instance.queue.pop(row.id, None)
            if not ok:
                self._maybe_kill(hook)
            return status is not None
        if ok:
            for row in rows:
                instance.queue.pop(row.id, None)
            return True
        now = self._now()
        for row in rows:
            row.retries += 1
            row.not_before = now + row.retries * config.webhook_retry_delay
        hook.unhealthy_until = now + config.webhook_health_check_time
        if not config.disable_auto_unpublish:
            self._maybe_kill(hook)
        return False

    def _maybe_kill(self, hook: Hook) -> None:
        """Unpublish when the last `webhook_disable_limit` attempts all failed (`killWebhook`)."""
        config = self._config()
        limit = max(config.webhook_disable_limit, 1)
        recent = hook.attempts[-limit:]
        if len(recent) < limit or any(200 <= s < 300 for s in recent):
            return
        modified = hook.date_modified
        if modified is not None and self._now() - modified < TWO_DAYS:
            return
        hook.is_published = False
        hook.stop_reason = "failures"
