"""Limits, faults, outages and latency in front of the API (ref §5, §9.5)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from starlette.requests import Request

from app.sandbox.constantcontact import clock, errors
from app.sandbox.constantcontact.errors import ApiError
from app.sandbox.constantcontact.state import AccessToken, SandboxState


class Gate:
    """The application-keyed 4/s bucket and daily quota, fault dice, outages, latency."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.reset()

    def reset(self) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at monotonic)
        self.days: dict[str, tuple[int, int]] = {}  # key → (UTC day number, requests)
        self.rng = random.Random(self.state.config.seed)
        self.outage_until = time.monotonic() + self.state.config.outage_seconds

    def reseed(self) -> None:
        self.rng = random.Random(self.state.config.seed)

    def start_outage(self) -> None:
        self.outage_until = time.monotonic() + self.state.config.outage_seconds

    def key(self, token: AccessToken) -> str:
        return token.client_id if self.state.config.quota_key == "client_id" else token.account_id

    def usage(self) -> dict[str, Any]:
        today = int(self.state.now() // 86_400)
        return {k: n for k, (d, n) in self.days.items() if d == today}

    def _limited(self, exc: ApiError, retry_after: float) -> ApiError:
        if self.state.config.retry_after_header:
            exc.headers.append(("retry-after", str(max(1, int(retry_after + 0.999)))))
        return exc

    def _take(self, key: str) -> tuple[str | None, float]:
        """Spend one request of `key`: None, or the limit that refused it and a wait."""
        config = self.state.config
        now_wall = self.state.now()
        today = int(now_wall // 86_400)
        day, used = self.days.get(key, (today, 0))
        if day != today:
            used = 0
        if used >= config.daily_quota:
            return "quota", clock.next_midnight(now_wall) - now_wall
        rate = config.rate_per_second
        now = time.monotonic()
        tokens, at = self.buckets.get(key, (rate, now))
        tokens = min(rate, tokens + (now - at) * rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return "throttled", (1 - tokens) / rate
        self.buckets[key] = (tokens - 1, now)
        self.days[key] = (today, used + 1)
        return None, 0.0

    async def admit(self, token: AccessToken, entry: dict[str, Any], request: Request) -> None:
        """Outage, then the limits, then the fault dice; raises the answer to give."""
        if time.monotonic() < self.outage_until:
            entry["decision"] = "outage"
            raise errors.unavailable()
        key = self.key(token)
        refused, wait = self._take(key)
        entry["quota_key"] = key
        if refused == "quota":
            entry["decision"] = "quota_exceeded"
            raise self._limited(errors.quota_exceeded(), wait)
        if refused == "throttled":
            entry["decision"] = "throttled"
            raise self._limited(errors.throttled(), wait)
        entry["decision"] = "admitted"
        rates = self.state.config.fault_rates
        if not any(rates.values()):
            return
        roll = self.rng.random()
        for kind, rate in rates.items():
            if roll < rate:
                if kind == "conflict_409" and not request.url.path.endswith("/sign_up_form"):
                    return
                entry["fault"] = kind
                await self._fault(kind)
                return
            roll -= rate

    async def _fault(self, kind: str) -> None:
        if kind == "429_throttled":
            raise self._limited(errors.throttled(), 1)
        if kind == "429_quota":
            now = self.state.now()
            raise self._limited(errors.quota_exceeded(), clock.next_midnight(now) - now)
        if kind == "401":
            raise errors.unauthorized()
        if kind == "403":
            raise errors.forbidden()
        if kind == "500":
            raise errors.internal()
        if kind == "503":
            raise errors.unavailable()
        if kind == "conflict_409":
            raise errors.conflict(
                "You sent simultaneous requests that are attempting to modify the same contact"
            )
        await asyncio.sleep(self.state.config.timeout_seconds)  # timeout: held, nothing applied
        raise ApiError(504, "gateway_timeout", "Gateway Timeout", kind="other")

    async def before_handler(
        self, entry: dict[str, Any], method: str, path: str, items: int, request: Request
    ) -> None:
        config = self.state.config
        delay = (config.latency_ms + config.latency_per_item_ms * items) / 1000
        entry["items"] = items
        if delay > 0:
            await asyncio.sleep(delay)
