"""Webhooks: URL validation on registration, and form-encoded deliveries with retries.

Deliveries run in background tasks, one ordered queue per webhook, so the API answer never
waits for a receiver and a slow receiver never delays another. Each attempt is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx

from app.sandbox.mailchimp import clock, errors
from app.sandbox.mailchimp.audience import ADDRESS_KEYS, Audience, Member, Webhook

if TYPE_CHECKING:
    from app.sandbox.mailchimp.config import SandboxConfig

VALIDATOR_AGENT = "MailChimp.com WebHook Validator"
DELIVERY_AGENT = "MailChimp.com"
URL_UNVERIFIED = "We couldn't verify the URL is working. Please double check and try again."


def payload(
    audience: Audience, event: str, member: Member, extra: dict[str, str], now: float
) -> list[tuple[str, str]]:
    """The form fields Mailchimp posts for `event` (reference §7.2)."""
    items = [("type", event), ("fired_at", clock.fired_at(now))]
    if event == "upemail":
        items += [
            ("data[list_id]", audience.id),
            ("data[new_id]", member.uid),
            ("data[new_email]", member.email),
            ("data[old_email]", extra.get("old_email", "")),
        ]
        return items
    if event == "cleaned":
        items += [
            ("data[list_id]", audience.id),
            ("data[reason]", extra.get("reason", "hard")),
            ("data[email]", member.email),
        ]
        return items
    if event == "unsubscribe":
        items += [
            ("data[action]", extra.get("action", "unsub")),
            ("data[reason]", extra.get("reason", "manual")),
        ]
    items += [
        ("data[id]", member.uid),
        ("data[list_id]", audience.id),
        ("data[email]", member.email),
        ("data[email_type]", member.email_type),
        ("data[merges][EMAIL]", member.email),
    ]
    for tag in audience.merge_tags:
        value = member.merge.get(tag, "")
        if isinstance(value, dict):
            items += [(f"data[merges][{tag}][{k}]", str(value.get(k, ""))) for k in ADDRESS_KEYS]
        else:
            items.append((f"data[merges][{tag}]", str(value)))
    if audience.interests:
        # Interests as Mailchimp posts them: every chosen name comma-joined, and per category.
        chosen = audience.chosen_interests(member)
        items.append(("data[merges][INTERESTS]", ", ".join(i.name for i in chosen)))
        for n, cat in enumerate(audience.interest_categories.values()):
            names = [i.name for i in chosen if i.category_id == cat.id]
            items += [
                (f"data[merges][GROUPINGS][{n}][id]", cat.id),
                (f"data[merges][GROUPINGS][{n}][unique_id]", cat.id),
                (f"data[merges][GROUPINGS][{n}][name]", cat.title),
                (f"data[merges][GROUPINGS][{n}][groups]", ", ".join(names)),
            ]
    items += [("data[ip_opt]", member.ip_opt), ("data[web_id]", str(member.web_id))]
    if event == "subscribe":
        items.append(("data[ip_signup]", member.ip_signup))
    return items


@dataclass(slots=True)
class _Delivery:
    webhook: Webhook
    list_id: str
    event: str
    source: str
    body: bytes
    created: float


class WebhookHub:
    """Queues, delivers and logs webhook calls; validates URLs on registration."""

    def __init__(self, config_ref: Callable[[], SandboxConfig], log_size: int = 5000) -> None:
        self._config = config_ref
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self._queues: dict[str, deque[_Delivery]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.pending = 0

    # -- the audience's event sink --------------------------------------------------------

    def sink(
        self, audience: Audience, event: str, member: Member, source: str, extra: dict[str, str]
    ) -> None:
        targets = [
            w for w in audience.webhooks.values() if w.events.get(event) and w.sources.get(source)
        ]
        if not targets:
            return
        now = clock.now()
        body = urlencode(payload(audience, event, member, extra, now)).encode()
        for webhook in targets:
            queue = self._queues.setdefault(webhook.id, deque())
            queue.append(_Delivery(webhook, audience.id, event, source, body, now))
            self.pending += 1
            self._ensure_worker(webhook.id)

    def _ensure_worker(self, webhook_id: str) -> None:
        worker = self._workers.get(webhook_id)
        if worker is not None and not worker.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: `drain()` starts it
        self._workers[webhook_id] = loop.create_task(self._run(webhook_id))

    async def _run(self, webhook_id: str) -> None:
        queue = self._queues[webhook_id]
        while queue:
            delivery = queue.popleft()
            try:
                await self._deliver(delivery)
            finally:
                self.pending -= 1

    async def _deliver(self, delivery: _Delivery) -> None:
        config = self._config()
        delays = [0.0, *config.webhook_retry_delays]
        for attempt, delay in enumerate(delays, start=1):
            if delay:
                await asyncio.sleep(delay)
            entry: dict[str, Any] = {
                "webhook_id": delivery.webhook.id,
                "list_id": delivery.list_id,
                "url": delivery.webhook.url,
                "type": delivery.event,
                "source": delivery.source,
                "attempt": attempt,
                "at": clock.now(),
                "status": None,
                "error": None,
                "delivered": False,
                "body": delivery.body.decode(),
            }
            try:
                response = await self.client().post(
                    delivery.webhook.url,
                    content=delivery.body,
                    headers={
                        "User-Agent": DELIVERY_AGENT,
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                    timeout=config.webhook_timeout_seconds,
                )
                entry["status"] = response.status_code
                entry["delivered"] = 200 <= response.status_code < 300
            except httpx.HTTPError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            self.log.append(entry)
            if entry["delivered"]:
                return
        self.log.append({**entry, "gave_up": True})

    # -- registration ---------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(follow_redirects=False)
            self._client_loop = loop
        return self._client

    async def validate_url(self, url: Any) -> str:
        """Mailchimp GETs the URL once; anything but 200 (or no answer) is a 400."""
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise errors.schema([{"field": "url", "message": "Please enter a valid URL."}])
        try:
            response = await self.client().get(
                url,
                headers={"User-Agent": VALIDATOR_AGENT},
                timeout=self._config().webhook_timeout_seconds,
            )
            status: int | None = response.status_code
        except httpx.HTTPError:
            status = None
        if status != 200:
            message = URL_UNVERIFIED + (f" HTTP Code: {status}" if status else "")
            raise errors.schema([{"field": "url", "message": message}])
        return url

    # -- control --------------------------------------------------------------------------

    async def drain(self, seconds: float = 10.0) -> None:
        """Wait until every queued delivery has been attempted (tests and benchmarks)."""
        for webhook_id, queue in self._queues.items():
            if queue:
                self._ensure_worker(webhook_id)
        async with asyncio.timeout(seconds):
            while self.pending:  # noqa: ASYNC110 - the hub may be used from several loops
                await asyncio.sleep(0.01)

    def clear(self) -> None:
        self.log.clear()

    async def aclose(self) -> None:
        for worker in self._workers.values():
            worker.cancel()
        for worker in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        self._workers.clear()
        self._queues.clear()
        self.pending = 0
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
