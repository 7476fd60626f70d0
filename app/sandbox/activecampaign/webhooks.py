"""Webhook delivery (reference §8.2-§8.3): form-encoded PHP-style keys, matching `events`,
`sources` and `listid`; at least once, never retried; a 410 deactivates the webhook.
Also the bulk-import callback (§5.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from app.sandbox.activecampaign import clocktext
from app.sandbox.activecampaign import constants as c

if TYPE_CHECKING:
    from app.sandbox.activecampaign.model import Account, Batch, Contact, Webhook
    from app.sandbox.activecampaign.state import AcState

log = logging.getLogger(__name__)


class WebhookHub:
    """Builds payloads at the moment of the change and sends them in the background."""

    def __init__(self, state: AcState) -> None:
        self.state = state
        self.log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.rng = random.Random(0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._muted = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed ^ 0x5EED)

    def clear(self) -> None:
        self.log.clear()

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Mass operations (imports) fire no webhooks."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    async def aclose(self) -> None:
        """Let deliveries under way finish, then close the HTTP client."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Wait for every delivery under way (tests and the control API)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- building -------------------------------------------------------------------------

    def emit(
        self,
        account: Account,
        event: str,
        contact: Contact,
        source: str,
        *,
        list_id: str = "0",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        if self._muted:
            return
        targets = [
            w
            for w in account.webhooks.values()
            if self._matches(w, event, source, list_id, contact)
        ]
        if not targets:
            return
        body = self._payload(account, event, contact, source, list_id, extra or [])
        for webhook in targets:
            copies = 2 if self.rng.random() < self.state.config.webhook_duplicate_rate else 1
            for n in range(copies):
                self._spawn(self._deliver(webhook, event, body, duplicate=n > 0))

    @staticmethod
    def _matches(w: Webhook, event: str, source: str, list_id: str, contact: Contact) -> bool:
        if not w.active or event not in w.events or source not in w.sources:
            return False
        if w.listid in ("", "0") or event in c.LIST_AGNOSTIC_EVENTS:
            return True
        if list_id != "0":
            return w.listid == list_id
        return w.listid in contact.lists  # an `update`: the contact is on the hook's list

    def _payload(
        self,
        account: Account,
        event: str,
        contact: Contact,
        source: str,
        list_id: str,
        extra: list[tuple[str, str]],
    ) -> str:
        config = self.state.config
        tags = ", ".join(account.tags[tid].tag for tid in contact.tags if tid in account.tags)
        pairs: list[tuple[str, str]] = [
            ("type", event),
            ("date_time", clocktext.local(self.state.clock.now(), config.timezone)),
            ("initiated_from", source),
            ("initiated_by", config.webhook_initiated_by.get(source, source)),
            ("list", list_id),
            ("contact[id]", contact.id),
            ("contact[email]", contact.email),
            ("contact[first_name]", contact.first_name),
            ("contact[last_name]", contact.last_name),
            ("contact[phone]", contact.phone),
            ("contact[ip]", "0.0.0.0"),
            ("contact[tags]", tags),
        ]
        if event not in ("contact_tag_added", "contact_tag_removed"):
            for fid, fv in contact.values.items():
                field = account.fields.get(fid)
                if field is None:
                    continue
                if "perstag" in config.webhook_field_keys:
                    pairs.append((f"contact[fields][{field.perstag.lower()}]", fv.value))
                if "id" in config.webhook_field_keys:
                    pairs.append((f"contact[fields][{fid}]", fv.value))
        pairs += [
            ("contact[customer_acct_name]", contact.customer_acct_name),
            ("contact[orgname]", contact.orgname),
            ("customer_acct_name", contact.customer_acct_name),
            ("customer_acct_id", "0"),
            ("orgname", contact.orgname),
            *extra,
        ]
        return urlencode(pairs)

    # -- sending --------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a synchronous caller): nothing can be sent
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def _deliver(self, webhook: Webhook, event: str, body: str, *, duplicate: bool) -> None:
        entry: dict[str, Any] = {
            "webhook_id": webhook.id,
            "url": webhook.url,
            "type": event,
            "duplicate": duplicate,
            "at": self.state.clock.now(),
            "body": body,
            "status": None,
            "error": None,
        }
        try:
            response = await self._http().post(
                webhook.url,
                content=body.encode(),
                headers={
                    "content-type": "application/x-www-form-urlencoded",
                    "user-agent": "ActiveCampaign/1.0",
                },
                timeout=self.state.config.webhook_timeout_seconds,
            )
            entry["status"] = response.status_code
            if response.status_code == 410:
                webhook.active = False  # "set to a state of inactive"; it stays listed
        except httpx.HTTPError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"  # never retried: it is lost
        self.log.append(entry)

    def callback(self, batch: Batch) -> None:
        """The bulk-import callback, once the batch completed."""
        self._spawn(self._callback(batch))

    async def _callback(self, batch: Batch) -> None:
        cb: dict[str, Any] = dict(batch.callback or {})
        url = str(cb.get("url") or "")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        method = str(cb.get("requestType") or "POST").upper()
        params = {
            str(p.get("key")): str(p.get("value"))
            for p in cb.get("params") or []
            if isinstance(p, dict) and p.get("key")
        }
        headers = {
            str(h.get("key")): str(h.get("value"))
            for h in cb.get("headers") or []
            if isinstance(h, dict) and h.get("key")
        }
        detailed = str(cb.get("detailed_results", "")).lower() == "true"
        result: dict[str, Any] = {
            "batchId": batch.id,
            "success": len(batch.success),
            "failure": len(batch.failure),
        }
        if detailed:
            result["failureReasons"] = list(batch.failure)
        entry: dict[str, Any] = {"batch_id": batch.id, "url": url, "type": "import_callback"}
        try:
            client = self._http()
            timeout = self.state.config.webhook_timeout_seconds
            if method == "GET":
                response = await client.get(
                    url,
                    params={**params, **{k: str(v) for k, v in result.items()}},
                    headers=headers,
                    timeout=timeout,
                )
            elif self.state.config.import_callback_format == "form":
                flat = {**params, **{k: str(v) for k, v in result.items() if k != "failureReasons"}}
                response = await client.post(url, data=flat, headers=headers, timeout=timeout)
            else:
                response = await client.post(
                    url, json={**result, **params}, headers=headers, timeout=timeout
                )
            entry["status"] = response.status_code
        except httpx.HTTPError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        self.log.append(entry)
